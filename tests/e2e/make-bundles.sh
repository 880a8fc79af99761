#!/bin/bash
# The update bundles the e2e upgrade test applies, made from the image's own bundle
# (target/image/keel-update.bundle) without a second image build:
#
#   next.bundle     "a second build": the same root with a newer version (<version>.2) in
#                   os-release (PRETTY_NAME, IMAGE_VERSION) and /etc/keel-image-id, squashed
#                   again, same kernel and initrd
#   broken.bundle   <version>.3 whose root is not a filesystem (a 4 MiB marker), real kernel
#                   and initrd: the initramfs cannot mount the new slot, panic=30 reboots and
#                   systemd-boot falls back once the entry's tries are spent
#   tampered.bundle broken.bundle with one payload byte changed (the signature still matches
#                   the manifest, the hash of the root does not)
#
# All are signed like build.sh signs (openssl ed25519 over the manifest bytes) with the key the
# image trusts: KEEL_SIGNING_KEY, default target/image/keys/keel-dev.pem.
#
#   tests/e2e/make-bundles.sh [SOURCE.bundle] [OUTDIR]     (root: unsquashfs keeps owners)
#
# OUTDIR defaults to target/e2e-bundles; it is reused while the source bundle is the same
# (its manifest and signature line are the stamp). Prints the versions as shell assignments:
# base_version=… next_version=… broken_version=…
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
src=${1:-$repo/target/image/keel-update.bundle}
out=${2:-$repo/target/e2e-bundles}
key=${KEEL_SIGNING_KEY:-$repo/target/image/keys/keel-dev.pem}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}
export LC_ALL=C

log() { printf '[bundles %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ -f "$src" ] || die "$src is missing: make image"
[ -f "$key" ] || die "signing key $key is missing (KEEL_SIGNING_KEY)"
for t in unsquashfs mksquashfs openssl python3 sha256sum; do
	command -v "$t" >/dev/null || die "$t is missing: make image-deps"
done
mkdir -p "$out"

# head.json: {version, build, offset, files:[{name,size,sha256}]} and the raw head bytes (stamp).
python3 - "$src" "$out/head.json" "$out/stamp.new" <<'EOF'
import json, sys
src, head_out, stamp_out = sys.argv[1:4]
with open(src, "rb") as f:
    first = f.readline()
    parts = first.split()
    if len(parts) != 3 or parts[0] != b"KEEL-UPDATE" or parts[1] != b"1":
        sys.exit(f"{src}: not a KEEL-UPDATE 1 bundle")
    manifest = f.read(int(parts[2]))
    if f.read(1) != b"\n":
        sys.exit(f"{src}: no newline after the manifest")
    sig = f.readline()
    if not sig.startswith(b"sig ed25519 "):
        sys.exit(f"{src}: unsigned")
    m = json.loads(manifest)
    m["offset"] = f.tell()
json.dump(m, open(head_out, "w"))
open(stamp_out, "wb").write(first + manifest + b"\n" + sig)
EOF
base_version=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' "$out/head.json")
next_version=$base_version.2
broken_version=$base_version.3
versions="base_version=$base_version next_version=$next_version broken_version=$broken_version"
if cmp -s "$out/stamp.new" "$out/stamp" && [ -f "$out/next.bundle" ] && [ -f "$out/broken.bundle" ] && [ -f "$out/tampered.bundle" ]; then
	rm -f "$out/stamp.new"
	log "up to date: $out (from $base_version)"
	echo "$versions"
	exit 0
fi
rm -f "$out/stamp" "$out"/*.bundle
started=$(date +%s)

# ---- payload files of the source ------------------------------------------------------------
work=$out/work
rm -rf "$work" && mkdir -p "$work"
python3 - "$src" "$out/head.json" "$work" <<'EOF'
import hashlib, json, sys
src, head, work = sys.argv[1:4]
h = json.load(open(head))
with open(src, "rb") as f:
    f.seek(h["offset"])
    for e in h["files"]:
        left, sha = e["size"], hashlib.sha256()
        with open(f"{work}/{e['name']}", "wb") as o:
            while left:
                b = f.read(min(left, 1 << 20))
                if not b:
                    sys.exit(f"{src}: truncated in {e['name']}")
                sha.update(b); o.write(b); left -= len(b)
        if sha.hexdigest() != e["sha256"]:
            sys.exit(f"{src}: {e['name']} does not match its hash")
EOF

pub_raw() { openssl pkey -in "$key" -pubout -outform DER 2>/dev/null | tail -c 32; }
key_id=$(pub_raw | sha256sum | cut -c1-16)
[ ${#key_id} = 16 ] || die "$key is not an ed25519 private key"
build=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["build"])' "$out/head.json")

# bundle VERSION BUILD ROOT VMLINUZ INITRD OUT: the format of image/build.sh.
bundle() {
	local version=$1 bld=$2 root=$3 vmlinuz=$4 initrd=$5 dst=$6 d=$work/sign
	rm -rf "$d" && mkdir -p "$d"
	entry() { printf '{"name":"%s","size":%s,"sha256":"%s"}' "$1" "$(stat -c %s "$2")" "$(sha256sum "$2" | cut -c1-64)"; }
	printf '{"format":1,"version":"%s","build":"%s","files":[%s,%s,%s]}' "$version" "$bld" \
		"$(entry root "$root")" "$(entry vmlinuz "$vmlinuz")" "$(entry initrd.img "$initrd")" >"$d/manifest.json"
	openssl pkeyutl -sign -inkey "$key" -rawin -in "$d/manifest.json" -out "$d/manifest.sig" 2>/dev/null \
		|| die "signing $dst failed"
	{
		printf 'KEEL-UPDATE 1 %s\n' "$(stat -c %s "$d/manifest.json")"
		cat "$d/manifest.json"
		printf '\nsig ed25519 %s %s\n' "$key_id" "$(od -An -tx1 -v "$d/manifest.sig" | tr -d ' \n')"
		cat "$root" "$vmlinuz" "$initrd"
	} >"$dst.tmp"
	mv "$dst.tmp" "$dst"
	rm -rf "$d"
}

# ---- next: the same root, a newer version ---------------------------------------------------
log "next: $next_version (root of $base_version, re-squashed)"
tree=$work/tree
unsquashfs -q -no-progress -d "$tree" "$work/root" >/dev/null || die "unsquashfs of the source root failed"
osr=$tree/usr/lib/os-release
[ -f "$osr" ] || die "the source root has no usr/lib/os-release"
grep -q "^IMAGE_VERSION=$base_version\$" "$osr" || die "the source root's os-release does not say IMAGE_VERSION=$base_version"
sed -i -e "s/^PRETTY_NAME=.*/PRETTY_NAME=\"Keel $next_version (Debian GNU\/Linux 12)\"/" \
	-e "s/^IMAGE_VERSION=.*/IMAGE_VERSION=$next_version/" "$osr"
printf '%s-e2e-next\n' "$build" >"$tree/etc/keel-image-id"
# The source's block size (image/build.sh chooses it), zstd as build.sh compresses.
block=$(unsquashfs -s "$work/root" 2>/dev/null | sed -n 's/^Block size \([0-9]*\).*/\1/p')
mksquashfs "$tree" "$work/next.sqfs" -comp zstd -Xcompression-level 9 -b "${block:-262144}" -noappend -quiet >/dev/null \
	|| die "mksquashfs failed"
rm -rf "$tree"
bundle "$next_version" "$build-e2e-next" "$work/next.sqfs" "$work/vmlinuz" "$work/initrd.img" "$out/next.bundle"

# ---- broken: a root that is no filesystem ---------------------------------------------------
log "broken: $broken_version (root is not a filesystem)"
{
	printf 'KEEL E2E: a deliberately broken root slot (%s); the initramfs cannot mount it\n' "$broken_version"
	head -c $((4 * 1024 * 1024 - 100)) /dev/zero
} | head -c $((4 * 1024 * 1024)) >"$work/broken.root"
bundle "$broken_version" "$build-e2e-broken" "$work/broken.root" "$work/vmlinuz" "$work/initrd.img" "$out/broken.bundle"

# ---- tampered: one payload byte of the broken bundle changed --------------------------------
cp "$out/broken.bundle" "$out/tampered.bundle.tmp"
off=$(($(stat -c %s "$out/tampered.bundle.tmp") - 4096))
printf 'X' | dd of="$out/tampered.bundle.tmp" bs=1 seek="$off" conv=notrunc status=none
mv "$out/tampered.bundle.tmp" "$out/tampered.bundle"

rm -rf "$work"
mv "$out/stamp.new" "$out/stamp"
log "done in $(($(date +%s) - started)) s: $out/{next,broken,tampered}.bundle ($(($(stat -c %s "$out/next.bundle") / 1048576)) MiB, $(($(stat -c %s "$out/broken.bundle") / 1048576)) MiB)"
echo "$versions"
