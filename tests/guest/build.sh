#!/bin/bash
# Builds Keel's tiny test guest from Debian packages, offline, in a few seconds.
#
#   tests/guest/build.sh OUT_DIR
#
# OUT_DIR gets:
#   vmlinuz      the host's Debian kernel (/boot/vmlinuz-*, package linux-image-amd64)
#   initrd.img   a busybox-static initramfs whose /init mounts proc, sys and dev, powers off on
#                the ACPI power button, and prints "keel-guest counter N" to ttyS0 once a second;
#                in the background it gives the first NIC an address and starts Debian's
#                qemu-guest-agent on the virtio-serial port org.qemu.guest_agent.0
#   cmdline      the kernel command line for direct kernel boot
#   disk.raw     a bootable raw disk: MBR (syslinux mbr.bin) + one FAT16 partition holding
#                vmlinuz, initrd.img and a syslinux config with the same command line
#
# Idempotent: a stamp holds a hash of every input; when it matches, nothing is rebuilt. Outputs
# are written to a staging directory and renamed into place, so a failed run never leaves a
# half-written guest behind. The initramfs is reproducible (fixed times, sorted entries).
#
# The guest agent (/usr/sbin/qemu-ga, package qemu-guest-agent) goes in with the shared
# libraries ldd names; a host without it builds a guest without an agent (and says so).
# In the guest:
#   - eth0 gets 192.0.2.N/24, N derived from the last byte of its MAC (1..254), at once; a
#     DHCP server that answers (udhcpc in the background) adds its lease as well.
#   - qemu-ga runs with an fsfreeze hook that prints "keel-guest fsfreeze freeze|thaw" to
#     ttyS0, and /sbin/shutdown (what guest-shutdown runs) prints "keel-guest agent shutdown"
#     and powers off: tests see on the serial console what the agent did.
#   - /run/keel-ignore-acpi (create it with guest-exec) makes the power button print
#     "keel-guest power button ignored" instead of powering off: a guest only the agent stops.
#
# Overrides: KEEL_GUEST_KERNEL (kernel image), KEEL_GUEST_BUSYBOX (a static busybox),
# KEEL_GUEST_AGENT (qemu-ga binary; empty string: none).
# Packages: linux-image-amd64 busybox-static cpio gzip syslinux syslinux-common mtools dosfstools
# qemu-guest-agent (system/virt/APT_PACKAGES lists them for CI).
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi
out=$1

die() { echo "tests/guest/build.sh: $*" >&2; exit 1; }

kernel=${KEEL_GUEST_KERNEL:-}
if [ -z "$kernel" ]; then
    # The newest installed Debian kernel; sort -V orders 6.1.0-9 before 6.1.0-10.
    kernel=$(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1 || true)
fi
[ -n "$kernel" ] && [ -r "$kernel" ] || die "no readable kernel in /boot (install linux-image-amd64)"
kver=${kernel##*/vmlinuz-}
busybox=${KEEL_GUEST_BUSYBOX:-/bin/busybox}
[ -x "$busybox" ] || die "no busybox at $busybox (install busybox-static)"
# The dynamic busybox package would boot to "not found": insist on a static binary.
if LC_ALL=C od -An -c -N 4096 "$busybox" | tr -d ' \n' | grep -q 'ld-linux'; then
    die "$busybox is dynamically linked (install busybox-static, not busybox)"
fi
mbr=/usr/lib/syslinux/mbr/mbr.bin
for tool in cpio gzip mkfs.fat mcopy syslinux; do
    command -v "$tool" >/dev/null || die "missing $tool (see system/virt/APT_PACKAGES)"
done
[ -r "$mbr" ] || die "missing $mbr (install syslinux-common)"

# Modules for a graceful ACPI shutdown: the power button driver and evdev to read its events.
# Debian 12 ships them uncompressed; a kernel without them still boots, it just ignores ACPI.
moddir=/lib/modules/$kver/kernel
modules=()
for m in "$moddir/drivers/input/evdev.ko" "$moddir/drivers/acpi/button.ko"; do
    [ -r "$m" ] && modules+=("$m")
done
# The virtio PCI transport, the virtio-serial console the agent talks on, and virtio-net,
# with what they need, in load order: modules.dep lists each module's dependencies so that
# loading them last to first works (as modprobe does). Debian builds them as modules; a kernel
# that has them built in (no .ko) needs none of them.
virtio_modules=()
depfile=/lib/modules/$kver/modules.dep
if [ -r "$depfile" ]; then
    for want in drivers/virtio/virtio_pci.ko drivers/char/virtio_console.ko \
        drivers/net/virtio_net.ko; do
        line=$(grep "^kernel/$want:" "$depfile" || true)
        [ -n "$line" ] || continue
        read -r -a deps <<<"${line#*:}"
        chain=()
        for ((k = ${#deps[@]} - 1; k >= 0; k--)); do
            chain+=("${deps[k]}")
        done
        chain+=("kernel/$want")
        for m in "${chain[@]}"; do
            f=/lib/modules/$kver/$m
            [ -r "$f" ] || continue
            case " ${virtio_modules[*]} " in *" $f "*) ;; *) virtio_modules+=("$f") ;; esac
        done
    done
fi

# The guest agent and the libraries it loads (ldd: the loader and every "=> /path").
agent=${KEEL_GUEST_AGENT-/usr/sbin/qemu-ga}
agent_libs=()
if [ -n "$agent" ]; then
    if [ -x "$agent" ]; then
        while read -r lib; do
            agent_libs+=("$lib")
        done < <(ldd "$agent" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u)
    else
        echo "tests/guest/build.sh: no $agent (install qemu-guest-agent); building a guest without an agent" >&2
        agent=
    fi
fi

# The flags after "quiet" skip work that only slows a TCG boot (about 1.5 s of 7.5 s here):
# speculation mitigations, KASLR, TSC calibration and the timer check.
cmdline="console=ttyS0 panic=-1 quiet mitigations=off nokaslr tsc=reliable no_timer_check"

stamp_of() {
    {
        echo "$cmdline"
        echo "agent=$agent"
        sha256sum "$0" "$kernel" "$busybox" "$mbr" "${modules[@]}" "${virtio_modules[@]}" \
            ${agent:+"$agent"} "${agent_libs[@]}"
    } | sha256sum | cut -d' ' -f1
}
stamp=$(stamp_of)
if [ -f "$out/.stamp" ] && [ "$(cat "$out/.stamp")" = "$stamp" ] \
    && [ -f "$out/vmlinuz" ] && [ -f "$out/initrd.img" ] && [ -f "$out/disk.raw" ]; then
    exit 0
fi

mkdir -p "$out"
stage=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$stage"' EXIT

# --- initramfs -----------------------------------------------------------------------------
root=$stage/root
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,run,etc,lib/modules,lib/virtio}
cp "$busybox" "$root/bin/busybox"
for applet in sh mount echo sleep insmod cat grep dd poweroff reboot ip udhcpc ls; do
    ln -s busybox "$root/bin/$applet"
done
for m in "${modules[@]}"; do
    cp "$m" "$root/lib/modules/"
done
# Numbered so that a glob loads them in dependency order.
i=10
for m in "${virtio_modules[@]}"; do
    cp "$m" "$root/lib/virtio/$i-${m##*/}"
    i=$((i + 1))
done
if [ -n "$agent" ]; then
    cp "$agent" "$root/sbin/qemu-ga"
    for lib in "${agent_libs[@]}"; do
        mkdir -p "$root${lib%/*}"
        cp -L "$lib" "$root$lib"
    done
    # /lib64/ld-linux-x86-64.so.2 is the loader path the binary names.
fi
# What qemu-ga's guest-shutdown runs (/sbin/shutdown -P|-H|-r +0 "..."): say so, answer the
# agent, then power off (or reboot) a moment later.
cat >"$root/sbin/shutdown" <<'SHUTDOWN'
#!/bin/sh
echo "keel-guest agent shutdown $1" >/dev/ttyS0
case "$1" in
    -r) (sleep 1; reboot -f) & ;;
    *) (sleep 1; poweroff -f) & ;;
esac
exit 0
SHUTDOWN
# qemu-ga's fsfreeze hook: runs with "freeze" before and "thaw" after a freeze.
cat >"$root/sbin/fsfreeze-hook" <<'HOOK'
#!/bin/sh
echo "keel-guest fsfreeze $1" >/dev/ttyS0
exit 0
HOOK
# udhcpc's script: add a lease next to the static address, never replace it.
cat >"$root/sbin/udhcpc-script" <<'DHCP'
#!/bin/sh
case "$1" in
    bound|renew)
        ip addr add "$ip/${mask:-24}" dev "$interface" 2>/dev/null
        echo "keel-guest dhcp $ip/${mask:-24}" >/dev/ttyS0 ;;
esac
exit 0
DHCP
chmod 0755 "$root/sbin/shutdown" "$root/sbin/fsfreeze-hook" "$root/sbin/udhcpc-script"
cat >"$root/init" <<'INIT'
#!/bin/sh
# Keel test guest: mount the basics, arm the power button, count forever on ttyS0.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in /lib/modules/evdev.ko /lib/modules/button.ko; do
    [ -f "$m" ] && insmod "$m" 2>/dev/null
done
# ACPI shutdown: block on every "Power Button" input device; the first event powers off
# (unless /run/keel-ignore-acpi exists: then it is ignored, and only the agent can stop us).
# Armed in the background, once the input devices have appeared, so counting starts at once.
(
    sleep 1
    for ev in /sys/class/input/event*; do
        [ -r "$ev/device/name" ] || continue
        if grep -q "Power Button" "$ev/device/name"; then
            (while dd if="/dev/input/${ev##*/}" of=/dev/null bs=24 count=1 2>/dev/null; do
                 if [ -e /run/keel-ignore-acpi ]; then
                     echo "keel-guest power button ignored" >/dev/ttyS0
                     continue
                 fi
                 echo "keel-guest power button" >/dev/ttyS0
                 poweroff -f
             done) &
        fi
    done
) &
# Network and guest agent, in the background too: virtio drivers, an address for the first
# NIC, then qemu-ga on the port named org.qemu.guest_agent.0 (devtmpfs has no udev symlink).
(
    for m in /lib/virtio/*.ko; do
        [ -f "$m" ] && insmod "$m" 2>/dev/null
    done
    for nic in /sys/class/net/*; do
        [ "${nic##*/}" = lo ] && continue
        ifname=${nic##*/}
        last=$(cat "$nic/address" 2>/dev/null)
        last=${last##*:}
        [ -n "$last" ] || continue
        ip link set lo up
        ip link set "$ifname" up
        ip addr add "192.0.2.$(((0x$last % 254) + 1))/24" dev "$ifname"
        udhcpc -b -q -i "$ifname" -s /sbin/udhcpc-script -t 3 -T 1 -A 30 >/dev/null 2>&1 &
        break
    done
    [ -x /sbin/qemu-ga ] || exit 0
    tries=0
    while [ $tries -lt 100 ]; do
        for port in /sys/class/virtio-ports/*; do
            if [ "$(cat "$port/name" 2>/dev/null)" = org.qemu.guest_agent.0 ]; then
                echo "keel-guest agent on ${port##*/}" >/dev/ttyS0
                exec /sbin/qemu-ga -m virtio-serial -p "/dev/${port##*/}" \
                    -F/sbin/fsfreeze-hook -t /run -f /run/qemu-ga.pid
            fi
        done
        tries=$((tries + 1))
        sleep 0.1
    done
) &
echo "keel-guest up" >/dev/ttyS0
n=0
while true; do
    n=$((n + 1))
    echo "keel-guest counter $n" >/dev/ttyS0
    sleep 1
done
INIT
chmod 0755 "$root/init"
find "$root" -exec touch -h -d @0 {} +
(cd "$root" && find . -print0 | LC_ALL=C sort -z \
    | cpio --null --create --format=newc --owner=0:0 --reproducible --quiet) \
    | gzip -9 -n >"$stage/initrd.img"
cp "$kernel" "$stage/vmlinuz"
echo "$cmdline" >"$stage/cmdline"

# --- bootable disk -------------------------------------------------------------------------
# One FAT16 partition from sector 2048, built as its own file (no loop devices, no root), then
# laid behind an MBR whose single partition entry we write by hand (sfdisk is not needed).
part_mib=32
part_sectors=$((part_mib * 2048))
fat=$stage/part.fat
truncate -s "${part_mib}M" "$fat"
mkfs.fat -F 16 -n KEELGUEST -i 4b45454c "$fat" >/dev/null
cat >"$stage/syslinux.cfg" <<EOF
SERIAL 0 115200
DEFAULT keel
PROMPT 0
TIMEOUT 0
LABEL keel
  KERNEL /vmlinuz
  INITRD /initrd.img
  APPEND $cmdline
EOF
export MTOOLS_SKIP_CHECK=1
mcopy -i "$fat" -m "$stage/vmlinuz" "$stage/initrd.img" "$stage/syslinux.cfg" ::/
syslinux --install "$fat"
disk=$stage/disk.raw
truncate -s $(((part_mib + 1) * 1024 * 1024)) "$disk"
dd if="$mbr" of="$disk" conv=notrunc bs=440 count=1 status=none
le32() { printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(($1 & 255)) $((($1 >> 8) & 255)) \
    $((($1 >> 16) & 255)) $((($1 >> 24) & 255)); }
# Entry 1: bootable, CHS fields unused (0xfe 0xff 0xff), type 0x0e (FAT16, LBA), LBA start, size.
entry="\\x80\\xfe\\xff\\xff\\x0e\\xfe\\xff\\xff$(le32 2048)$(le32 $part_sectors)"
printf "$entry" | dd of="$disk" conv=notrunc bs=1 seek=446 status=none
printf '\x55\xaa' | dd of="$disk" conv=notrunc bs=1 seek=510 status=none
dd if="$fat" of="$disk" conv=notrunc bs=1M seek=1 status=none
rm -f "$fat" "$stage/syslinux.cfg"
rm -rf "$root"

for f in vmlinuz initrd.img cmdline disk.raw; do
    mv -f "$stage/$f" "$out/$f"
done
echo "$stamp" >"$out/.stamp"
