#!/bin/bash
# Boot time of ONE Keel appliance VM under TCG (issue 4: "boot to API ready <= 60 s per node",
# docs/PERFORMANCE.md). Boots a qcow2 overlay of the image (q35, TCG, 1 vCPU, 1 GiB, OVMF +
# systemd-boot, the same machine as tests/e2e/run.sh) with a KEEL-SEED disk for a one-node
# cluster, and reports from the host side:
#   health_s   power-on -> GET /api/v1/health answers (keeld's API listens)
#   member_s   power-on -> health phase "member" (the one-node cluster is founded)
#   systemd-analyze time / blame / critical-chain of keeld.service (from the guest journal,
#   written by keel-boot-report.service on the virtio console)
# and the host load (uptime) before and after, since the 2-core host is shared.
#
#   tests/e2e/boot-time.sh [IMAGE.qcow2]     (root; default target/image/keel.qcow2)
# Environment: KEEL_BOOT_DIR (work dir, default target/boot-time), KEEL_BOOT_TIMEOUT (600 s),
# KEEL_BOOT_MEM (1024), KEEL_BOOT_RAFT_SCALE (10, as in run.sh), KEEL_BOOT_KEEP=1 (leave the
# VM running), KEEL_BOOT_BIOS=1 (SeaBIOS instead of OVMF), KEEL_BOOT_INDEX=N (N > 1: a second
# instance at the same time, namespace keel-boot-N, to compare two images under the same load).
# Network namespace keel-boot, 10.77.30.0/24 (node 10.77.30.11), so it does not collide with
# run.sh (keel-e2e, 10.77.20.0/24).
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
img=${1:-$repo/target/image/keel.qcow2}
work=${KEEL_BOOT_DIR:-$repo/target/boot-time}
timeout=${KEEL_BOOT_TIMEOUT:-600}
mem=${KEEL_BOOT_MEM:-1024}
idx=${KEEL_BOOT_INDEX:-1}
ns=keel-boot
[ "$idx" = 1 ] || ns=keel-boot-$idx
prefix=10.77.30
addr=$prefix.11
mac=52:54:00:77:30:11
ovmf_code=/usr/share/OVMF/OVMF_CODE_4M.fd
ovmf_vars=/usr/share/OVMF/OVMF_VARS_4M.fd
export MTOOLS_SKIP_CHECK=1

log() { printf '[boot-time %s] %s\n' "$(date +%T)" "$*" >&2; }
[ "$(id -u)" = 0 ] || { echo "boot-time needs root (network namespace, tap)"; exit 1; }
[ -f "$img" ] || { echo "$img is missing: image/build.sh"; exit 1; }
img=$(readlink -f "$img")
in_ns() { ip netns exec "$ns" "$@"; }

stop_vm() {
	if [ -f "$work/qemu.pid" ]; then
		kill "$(cat "$work/qemu.pid")" 2>/dev/null || true
		rm -f "$work/qemu.pid"
	fi
	ip netns del "$ns" 2>/dev/null || true
}
finish() { [ -n "${KEEL_BOOT_KEEP:-}" ] || stop_vm; }
stop_vm
rm -rf "$work" && mkdir -p "$work"
trap finish EXIT

ip netns add "$ns"
in_ns ip link set lo up
in_ns ip link add br0 type bridge mcast_snooping 0
in_ns ip addr add "$prefix.1/24" dev br0
in_ns ip link set br0 up
in_ns ip tuntap add dev btap1 mode tap
in_ns ip link set btap1 master br0 up

cat >"$work/answer.toml" <<EOF
[cluster]
name = "boot"
expected_nodes = 1
join_secret = "keel-boot-join-secret-0123456789"

[admin]
password = "keel-boot-admin-pw"

[node]
name = "node1"

[network.management]
mac = "$mac"
address = "$addr/24"
gateway = "$prefix.1"
EOF
echo "KEEL_RAFT_TIMING_SCALE=${KEEL_BOOT_RAFT_SCALE:-10}" >"$work/keeld.env"
mkfs.vfat -C -n KEEL-SEED "$work/seed.img" 2048 >/dev/null
mcopy -i "$work/seed.img" "$work/answer.toml" ::/answer.toml
mcopy -i "$work/seed.img" "$work/keeld.env" ::/keeld.env
qemu-img create -q -f qcow2 -b "$img" -F qcow2 "$work/node1.qcow2" 8G
firmware=()
if [ -z "${KEEL_BOOT_BIOS:-}" ]; then
	cp "$ovmf_vars" "$work/vars.fd"
	firmware=(-drive "if=pflash,format=raw,readonly=on,file=$ovmf_code" -drive "if=pflash,format=raw,file=$work/vars.fd")
fi

load_before=$(uptime)
log "image $img"
log "load before: $load_before"
t0=$(date +%s.%N)
in_ns qemu-system-x86_64 -name "$ns-node1" -machine q35,accel=tcg -cpu max -smp 1 -m "$mem" \
	"${firmware[@]}" \
	-drive "file=$work/node1.qcow2,if=virtio,format=qcow2,cache=unsafe" \
	-drive "file=$work/seed.img,if=virtio,format=raw,readonly=on" \
	-netdev "tap,id=mgmt,ifname=btap1,script=no,downscript=no" \
	-device "virtio-net-pci,netdev=mgmt,mac=$mac" \
	-device virtio-serial-pci -chardev "file,id=journal,path=$work/journal.log" \
	-device virtconsole,chardev=journal \
	-serial "file:$work/console.log" -display none \
	-monitor "unix:$work/mon.sock,server,nowait" \
	-pidfile "$work/qemu.pid" -daemonize
since() { echo "$(date +%s.%N) - $t0" | bc | xargs printf '%.1f'; }

health_s="" member_s="" console_s=""
while :; do
	el=$(since)
	if [ "${el%.*}" -ge "$timeout" ]; then log "timeout after ${timeout} s"; break; fi
	if [ -z "$console_s" ] && [ -s "$work/console.log" ]; then console_s=$el; fi
	body=$(in_ns curl -sk --max-time 5 "https://$addr:8443/api/v1/health" 2>/dev/null || true)
	if [ -n "$body" ]; then
		[ -n "$health_s" ] || { health_s=$(since); log "health answers after ${health_s} s: $body"; }
		if printf '%s' "$body" | grep -q '"phase":"member"'; then member_s=$(since); log "member after ${member_s} s"; break; fi
	fi
	sleep 0.5
done

# keel-boot-report writes systemd-analyze into the journal once the boot has finished.
report=""
for _ in $(seq 1 240); do
	if grep -q 'keel-boot-report.*Startup finished' "$work/journal.log" 2>/dev/null \
		&& grep -q 'keel-boot-report.*keeld.service' "$work/journal.log" 2>/dev/null; then
		sleep 3
		report=$(grep 'keel-boot-report' "$work/journal.log" | sed 's/\x1b\[[0-9;=]*[a-zA-Z]//g; s/^.*keel-boot-report\[[0-9]*\]: //')
		break
	fi
	sleep 1
done
load_after=$(uptime)
{
	echo "image: $img"
	echo "date: $(date -u +%FT%TZ)"
	echo "load before: $load_before"
	echo "load after:  $load_after"
	echo "console_first_byte_s: ${console_s:-none}"
	echo "health_s: ${health_s:-none}"
	echo "member_s: ${member_s:-none}"
	echo "--- systemd-analyze (guest) ---"
	printf '%s\n' "${report:-<no keel-boot-report in the journal>}"
} | tee "$work/result.txt" >&2
[ -n "$member_s" ]
