# shellcheck shell=bash
# Sourced by tests/e2e/run.sh once the three nodes formed their cluster and a reset node
# rejoined (it uses run.sh's helpers: in_ns, api, login, node_states, all_ready, pass, fail,
# log, and its variables: repo, work, prefix, nodes, password).
#
#  1. tests/e2e/make-bundles.sh makes, from the image's own bundle, a second build (same root,
#     version <v>.2), a broken one (<v>.3, its root is no filesystem) and a tampered copy;
#  2. the cluster CA is read from node1's data partition (the API's certificate is signed by
#     it; the CLI trusts that CA and nothing else);
#  3. `keel upgrade apply tampered.bundle` is refused and creates no upgrade;
#  4. `keel upgrade apply next.bundle --wait` upgrades node1..3 one at a time: it succeeds,
#     and every node reports "Keel <v>.2 (…)" in status.versions.os, is ready and out of
#     maintenance;
#  5. `keel upgrade apply broken.bundle --nodes node3 --tries 1 --wait` fails: node3's new slot
#     does not mount, panic=30 reboots, systemd-boot falls back to the slot it ran; the upgrade
#     ends `failed` with a message naming node3, node3 is rolled-back, back on <v>.2, ready and
#     out of maintenance, and node1's and node2's APIs answered all along.
# Timings go to $work/timings.txt; every CLI call's output to $work/upgrade-*.
#
# Environment: KEEL_E2E_CLI (default target/release/keel), KEEL_E2E_BUNDLE (default
# target/image/keel-update.bundle), KEEL_E2E_UPGRADE_TIMEOUT (s, default 3600),
# KEEL_E2E_ROLLBACK_TIMEOUT (s, default 1500).

up_cli=${KEEL_E2E_CLI:-$repo/target/release/keel}
up_bundle=${KEEL_E2E_BUNDLE:-$repo/target/image/keel-update.bundle}
up_timeout=${KEEL_E2E_UPGRADE_TIMEOUT:-3600}
rb_timeout=${KEEL_E2E_ROLLBACK_TIMEOUT:-1500}
up_endpoint="https://$prefix.11:8443"

# The cluster CA, from node1's data partition (ext4, partition "data" of its disk; keeld's
# state is in the /var overlay: overlay/var/upper/lib/keel/tls/ca.pem). Read through qemu-img
# with -U (the VM keeps running) and debugfs, nothing mounted.
cluster_ca() {
	local disk=$work/node1.qcow2 off
	qemu-img dd -U -f qcow2 -O raw if="$disk" of="$work/gpt-1.raw" bs=1M count=1 2>/dev/null || return 1
	off=$(python3 - "$work/gpt-1.raw" <<-'EOF'
		import struct, sys
		d = open(sys.argv[1], "rb").read()
		if d[512:520] != b"EFI PART":
		    sys.exit("no GPT")
		lba, n, size = struct.unpack_from("<QII", d, 512 + 72)
		for i in range(n):
		    e = d[lba * 512 + i * size: lba * 512 + (i + 1) * size]
		    if len(e) < 128:
		        break
		    name = e[56:128].decode("utf-16-le").rstrip("\0")
		    if name == "data":
		        print(struct.unpack_from("<Q", e, 32)[0] * 512)
		        sys.exit(0)
		sys.exit("no partition named data")
	EOF
	) || return 1
	rm -f "$work/data-1.raw"
	qemu-img convert -U --image-opts "driver=raw,offset=$off,file.driver=qcow2,file.file.filename=$disk" \
		-O raw "$work/data-1.raw" 2>"$work/data-1.err" || return 1
	debugfs -R "cat /overlay/var/upper/lib/keel/tls/ca.pem" "$work/data-1.raw" >"$work/ca.pem" 2>/dev/null
	rm -f "$work/data-1.raw" "$work/gpt-1.raw"
	grep -q 'BEGIN CERTIFICATE' "$work/ca.pem"
}

# keel CLI against node1's API, inside the namespace, logged in by KEEL_USERNAME/PASSWORD;
# kcli_t SECONDS ... stops it after that long (exit 124).
kcli_t() {
	local t=$1
	shift
	in_ns timeout "$t" env KEEL_ENDPOINT="$up_endpoint" KEEL_CA_CERT="$work/ca.pem" KEEL_USERNAME=admin \
		KEEL_PASSWORD="$password" HOME="$work/cli-home" "$up_cli" "$@"
}
kcli() { kcli_t 300 "$@"; }

# Fields of the Upgrade record in file $1 (a record, or a list, plain or {items:[...]}, of
# which the last one to version $2 counts): "phase|message|node:phase:from:running:message;..."
# ($3 = brief: "phase node:phase ...").
upgrade_summary() {
	python3 - "$1" "${2:-}" "${3:-}" <<-'EOF'
		import json, sys
		try:
		    d = json.load(open(sys.argv[1]))
		except Exception as e:
		    print("unreadable|%s|" % e); sys.exit(0)
		if isinstance(d, dict) and "items" in d:
		    d = d["items"]
		if not isinstance(d, list):
		    d = [d]
		d = [u for u in d if isinstance(u, dict) and (not sys.argv[2] or u.get("spec", {}).get("version") == sys.argv[2])]
		d = d[-1] if d else {}
		st = d.get("status", {})
		if sys.argv[3] == "brief":
		    print(" ".join([st.get("phase", "none")] + ["%s:%s" % (n.get("node"), n.get("phase")) for n in st.get("nodes", [])]))
		    sys.exit(0)
		nodes = ";".join("%s:%s:%s:%s:%s" % (n.get("node"), n.get("phase"), n.get("from_version"),
		    n.get("running_version"), (n.get("message") or "").replace(";", ",").replace("|", "/"))
		    for n in st.get("nodes", []))
		print("%s|%s|%s" % (st.get("phase", ""), (st.get("message") or "").replace("|", "/"), nodes))
	EOF
}

# "name|state|os|in maintenance or cordoned (true/false)" per node, as node $1's API says.
node_os() {
	api -H "authorization: Bearer $token" "https://$prefix.$((10 + $1)):8443/api/v1/nodes" 2>/dev/null |
		python3 -c '
import json, sys
for n in sorted(json.load(sys.stdin)["items"], key=lambda n: n["metadata"]["name"]):
    s = n.get("status", {})
    sp = n.get("spec", {})
    print("%s|%s|%s|%s" % (n["metadata"]["name"], s.get("state"), s.get("versions", {}).get("os", ""),
        str(sp.get("maintenance", False) or sp.get("cordoned", False)).lower()))
' 2>/dev/null || true
}
os_of() { node_os "$2" | awk -F'|' -v n="$1" '$1==n {print $3}'; }

# Follows the upgrade to version $3 (`keel upgrade status -o json`, through the first node
# whose API answers: the one the CLI talks to reboots too) every 10 s into
# $work/upgrade-$1.progress ("seconds phase node:phase ...", on every change) and keeps the
# last record in $work/upgrade-$1.status.json; until the apply in the background ($2: its
# pid) has ended and the record is final (or none was created), or until the time $4. Probes
# the health of the nodes in $probe_nodes each time and counts the probes without an answer.
follow_upgrade() {
	local tag=$1 pid=$2 version=$3 until=$4 last="" phase="" s i up_endpoint
	api_misses=0
	api_probes=0
	: >"$work/upgrade-$tag.progress"
	while [ "$(date +%s)" -lt "$until" ]; do
		for i in $(seq 1 $nodes); do
			up_endpoint="https://$prefix.$((10 + i)):8443"
			if kcli_t 60 upgrade status -o json >"$work/upgrade-$tag.poll.json" 2>/dev/null; then
				mv "$work/upgrade-$tag.poll.json" "$work/upgrade-$tag.status.json"
				s=$(upgrade_summary "$work/upgrade-$tag.status.json" "$version" brief)
				phase=${s%% *}
				if [ "$s" != "$last" ]; then
					printf '%s %s\n' "$(($(date +%s) - t0))" "$s" >>"$work/upgrade-$tag.progress"
					log "upgrade $tag: $s (through node$i)"
					last=$s
				fi
				break
			fi
		done
		if [ -n "${probe_nodes:-}" ]; then
			for i in $probe_nodes; do
				api_probes=$((api_probes + 1))
				[ "$(health "$i")" = member ] || api_misses=$((api_misses + 1))
			done
		fi
		if ! kill -0 "$pid" 2>/dev/null; then
			case "$phase" in succeeded | failed | none) break ;; esac
		fi
		sleep 10
	done
	rm -f "$work/upgrade-$tag.poll.json"
}

# Seconds each node spent from draining to done (or rolled-back), from a .progress file.
node_durations() {
	python3 - "$1" <<-'EOF'
		import sys
		start, end = {}, {}
		for line in open(sys.argv[1]):
		    parts = line.split()
		    t = int(parts[0])
		    for p in parts[2:]:
		        node, _, phase = p.partition(":")
		        if phase in ("draining", "installing", "rebooting") and node not in start:
		            start[node] = t
		        if phase in ("done", "blessed", "rolled-back", "failed") and node in start and node not in end:
		            end[node] = t
		print(" ".join("%s=%ss" % (n, end[n] - start[n]) for n in sorted(end)))
	EOF
}

upgrade_e2e() {
	local out rc s phase msg t_up t_rb i os want bad
	log "upgrade: making the second and the broken bundle from $(basename "$up_bundle")"
	if ! out=$("$repo/tests/e2e/make-bundles.sh" "$up_bundle" "$repo/target/e2e-bundles" 2>"$work/make-bundles.log"); then
		fail "make-bundles.sh: $(tail -n 3 "$work/make-bundles.log" | tr '\n' ' ')"
		return
	fi
	eval "$out"
	local bdir=$repo/target/e2e-bundles
	log "upgrade: $base_version -> $next_version, then the broken $broken_version on node3"
	[ -x "$up_cli" ] || { fail "the CLI $up_cli is missing (cargo build --release -p keel-cli)"; return; }
	if ! "$up_cli" upgrade --help >/dev/null 2>&1; then
		fail "$up_cli has no 'upgrade' command"
		return
	fi
	if cluster_ca; then
		log "upgrade: cluster CA read from node1's data partition"
	else
		fail "cannot read the cluster CA from node1's disk ($(cat "$work/data-1.err" 2>/dev/null | head -n 2 | tr '\n' ' '))"
		return
	fi
	mkdir -p "$work/cli-home"
	login 1 || true
	for i in $(seq 1 $nodes); do
		os=$(os_of "node$i" 1)
		[ "$os" = "Keel $base_version (Debian GNU/Linux 12)" ] ||
			log "upgrade: node$i reports '$os' before the upgrade (expected $base_version)"
	done

	# ---- a tampered bundle is refused -------------------------------------------------------
	if kcli upgrade apply "$bdir/tampered.bundle" -o json >"$work/upgrade-tampered.out" 2>"$work/upgrade-tampered.err"; then
		fail "a tampered bundle was accepted: $(head -c 300 "$work/upgrade-tampered.out")"
	else
		kcli upgrade status -o json >"$work/upgrade-after-tampered.json" 2>/dev/null || true
		if grep -q "$broken_version" "$work/upgrade-after-tampered.json" 2>/dev/null; then
			fail "the tampered bundle was refused but an upgrade to $broken_version exists"
		else
			pass "a tampered bundle is refused: $(head -c 200 "$work/upgrade-tampered.err" | tr '\n' ' ')"
		fi
	fi

	# ---- the whole cluster to the second build ----------------------------------------------
	log "upgrade: keel upgrade apply next.bundle --wait (all nodes, one at a time)"
	local started=$(date +%s)
	kcli_t "$up_timeout" upgrade apply "$bdir/next.bundle" --wait -o json >"$work/upgrade-next.json" 2>"$work/upgrade-next.err" &
	local apid=$!
	probe_nodes=""
	follow_upgrade next "$apid" "$next_version" $((started + up_timeout))
	rc=0
	wait "$apid" || rc=$?
	t_up=$(($(date +%s) - started))
	s=$(upgrade_summary "$work/upgrade-next.status.json" "$next_version")
	phase=${s%%|*}
	if [ "$phase" = succeeded ]; then
		pass "the upgrade to $next_version succeeded in ${t_up} s (per node: $(node_durations "$work/upgrade-next.progress"))"
	else
		fail "the upgrade to $next_version after ${t_up} s: '$s'"
	fi
	if [ "$rc" -eq 0 ] && [ "$(upgrade_summary "$work/upgrade-next.json" "$next_version" brief | cut -d' ' -f1)" = succeeded ]; then
		pass "keel upgrade apply --wait -o json exited 0 with the succeeded record"
	else
		fail "keel upgrade apply --wait exited $rc: $(tail -n 3 "$work/upgrade-next.err" | tr '\n' ' ') $(head -c 200 "$work/upgrade-next.json")"
	fi
	login 1 || true
	want="Keel $next_version (Debian GNU/Linux 12)"
	bad=""
	for _ in $(seq 1 40); do
		bad=""
		while IFS='|' read -r n state os maint; do
			[ "$state" = ready ] && [ "$os" = "$want" ] && [ "$maint" = false ] || bad="$bad $n:$state:$os:maint=$maint"
		done < <(node_os 1)
		[ -z "$bad" ] && [ "$(node_os 1 | wc -l)" -eq "$nodes" ] && break
		sleep 3
	done
	if [ -z "$bad" ]; then
		pass "every node runs $next_version, is ready and out of maintenance (not cordoned)"
	else
		fail "after the upgrade:$bad"
	fi
	echo "upgrade_s: $t_up ($(node_durations "$work/upgrade-next.progress"))" >>"$work/timings.txt"
	case "$phase" in
	succeeded | failed) ;;
	*)
		fail "the rollback check is skipped: the upgrade to $next_version did not finish"
		return
		;;
	esac

	# ---- a broken bundle on node3 rolls back by itself --------------------------------------
	log "upgrade: keel upgrade apply broken.bundle --nodes node3 --tries 1 --wait"
	started=$(date +%s)
	kcli_t "$rb_timeout" upgrade apply "$bdir/broken.bundle" --nodes node3 --tries 1 --wait -o json \
		>"$work/upgrade-broken.json" 2>"$work/upgrade-broken.err" &
	apid=$!
	probe_nodes="1 2"
	follow_upgrade broken "$apid" "$broken_version" $((started + rb_timeout))
	rc=0
	wait "$apid" || rc=$?
	t_rb=$(($(date +%s) - started))
	s=$(upgrade_summary "$work/upgrade-broken.status.json" "$broken_version")
	phase=${s%%|*}
	msg=$(printf '%s' "$s" | cut -d'|' -f2)
	if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && cat "$work/upgrade-broken.err" "$work/upgrade-broken.json" | grep -q node3; then
		pass "keel upgrade apply --wait of the broken bundle exits $rc, saying: $(tail -n 2 "$work/upgrade-broken.err" | tr '\n' ' ')"
	else
		fail "keel upgrade apply --wait of the broken bundle exits $rc after ${t_rb} s: $(tail -n 2 "$work/upgrade-broken.err" | tr '\n' ' ')"
	fi
	if [ "$phase" = failed ] && printf '%s' "$msg" | grep -q node3; then
		pass "the broken upgrade ended failed after ${t_rb} s, naming node3: $msg"
	else
		fail "the broken upgrade: '$s'"
	fi
	# node3 reports rolled-back; the leader then stops the upgrade and marks node3's part
	# failed, keeping its message. Either way it must say node3 runs the version it had.
	local n3
	n3=$(printf '%s' "$s" | cut -d'|' -f3 | tr ';' '\n' | grep '^node3:' || true)
	case "$n3" in
	"node3:rolled-back:$next_version:$next_version:"* | "node3:failed:$next_version:$next_version:came back on $next_version"*)
		pass "node3's part of the upgrade says it came back on $next_version: $n3"
		;;
	*) fail "node3's part of the broken upgrade: '$n3'" ;;
	esac
	login 1 || true
	want="Keel $next_version (Debian GNU/Linux 12)"
	bad=""
	for _ in $(seq 1 40); do
		bad=""
		while IFS='|' read -r n state os maint; do
			[ "$state" = ready ] && [ "$os" = "$want" ] && [ "$maint" = false ] || bad="$bad $n:$state:$os:maint=$maint"
		done < <(node_os 1)
		[ -z "$bad" ] && [ "$(node_os 1 | wc -l)" -eq "$nodes" ] && break
		sleep 3
	done
	if [ -z "$bad" ]; then
		pass "node3 came back on $next_version by itself; every node is ready, out of maintenance and on $next_version"
	else
		fail "after the rollback:$bad"
	fi
	if grep -aq 'Failed to mount /dev/vda2 as root\|Failed to mount /dev/vda3 as root' "$work/console-3.log"; then
		pass "node3's console shows the new slot was tried and did not mount"
		# run.sh leaves out boot-fallback.sh then: this was the same fallback, on a cluster.
		case "$n3" in *":$next_version:$next_version:"*) [ -n "$bad" ] || upgrade_rollback_proved=1 ;; esac
	else
		fail "node3's console shows no try of the broken slot"
	fi
	if [ "$api_probes" -gt 0 ] && [ "$api_misses" -eq 0 ]; then
		pass "node1's and node2's APIs answered all $api_probes probes during the rollback"
	else
		fail "node1/node2 missed $api_misses of $api_probes API probes during the rollback"
	fi
	echo "rollback_s: $t_rb" >>"$work/timings.txt"
}

# KEEL_E2E_UPGRADE_DEFINE_ONLY=1: define the functions only (to try them with stubs).
[ -n "${KEEL_E2E_UPGRADE_DEFINE_ONLY:-}" ] || upgrade_e2e
