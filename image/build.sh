#!/bin/bash
# Builds Keel's appliance disk image without a container engine (needs root: debootstrap,
# chroot, an overlay mount).
#
#   image/build.sh            -> target/image/keel.raw, target/image/keel.qcow2,
#                                target/image/keel-update.bundle (signed A/B update)
#
# Environment: KEEL_IMAGE_VERSION (default <workspace version>-<UTC build time>),
# KEEL_SIGNING_KEY (ed25519 PEM private key; default: a dev key generated once into
# target/image/keys/), KEEL_IMAGE_OUT, KEEL_IMAGE_FORCE=1, KEEL_BIN_DIR.
#
# Stages (see docs/IMAGE.md):
#   base   debootstrap (tarball cached) + image/packages.txt + initramfs config, pruned.
#          Cached in target/image/cache/base-<hash of its inputs>; rebuilt only when
#          packages.txt, this script or image/initramfs/ change.
#   root   base + overlays/rootfs + the release keeld/keel, as an overlay mount -> squashfs.
#   disk   GPT: esp (systemd-boot, kernel, initrd), root-a (squashfs), root-b (empty
#          until the first upgrade), data (ext4, grown to fill the disk on first boot).
# The whole output is skipped when nothing it is made from changed (target/image/keel.key).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
out=${KEEL_IMAGE_OUT:-$repo/target/image}
cache=$out/cache
mirror=${KEEL_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
bin=${KEEL_BIN_DIR:-$repo/target/release}
# Fixed identifiers so that two builds of the same inputs give the same partition table.
DISK_GUID=4b45454c-0000-4000-8000-000000000000
ESP_GUID=4b45454c-0001-4000-8000-000000000001
ROOTA_GUID=4b45454c-0002-4000-8000-00000000000a
ROOTB_GUID=4b45454c-0003-4000-8000-00000000000b
DATA_GUID=4b45454c-0004-4000-8000-000000000004
ESP_MIB=256
SLOT_MIB=1024
DATA_MIB=256
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}
export E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH
export MTOOLS_SKIP_CHECK=1
export LC_ALL=C

log() { printf '[image %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot and the overlay mount need it)"
for t in debootstrap mksquashfs sgdisk mkfs.vfat mcopy mkfs.ext4 qemu-img openssl; do
	command -v "$t" >/dev/null || die "$t is missing: run 'make image-deps'"
done
[ -f /usr/lib/systemd/boot/efi/systemd-bootx64.efi ] || die "systemd-boot-efi is missing: run 'make image-deps'"
for b in keeld keel; do
	[ -x "$bin/$b" ] || die "$bin/$b is missing: cargo build --release -p keel-keeld -p keel-cli"
done
mkdir -p "$cache"

# ---- signing key and version ------------------------------------------------------------
# Update bundles are signed with ed25519 (docs/IMAGE.md, "Upgrades"); the image trusts the
# public key, baked into /usr/share/keel/update-keys/<key id>.pub.
keydir=$out/keys
signing_key=${KEEL_SIGNING_KEY:-$keydir/keel-dev.pem}
if [ ! -f "$signing_key" ]; then
	[ -z "${KEEL_SIGNING_KEY:-}" ] || die "KEEL_SIGNING_KEY=$signing_key does not exist"
	mkdir -p "$keydir" && chmod 0700 "$keydir"
	openssl genpkey -algorithm ed25519 -out "$signing_key.tmp" 2>/dev/null || die "openssl cannot make an ed25519 key"
	chmod 0600 "$signing_key.tmp" && mv "$signing_key.tmp" "$signing_key"
	log "signing key: generated a development key $signing_key (set KEEL_SIGNING_KEY for releases)"
fi
pub_raw() { openssl pkey -in "$signing_key" -pubout -outform DER 2>/dev/null | tail -c 32; }
pub_hex=$(pub_raw | od -An -tx1 -v | tr -d ' \n')
[ ${#pub_hex} = 64 ] || die "$signing_key is not an ed25519 private key"
key_id=$(pub_raw | sha256sum | cut -c1-16)
ws_version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$repo/Cargo.toml")
image_version=${KEEL_IMAGE_VERSION:-$ws_version-$(date -u +%Y%m%d%H%M%S)}
case "$image_version" in
[0-9]*) ;;
*) die "KEEL_IMAGE_VERSION=$image_version must start with a digit" ;;
esac

hash_files() { (cd "$repo" && find "$@" -type f -print0 | sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16; }

# ---- up to date? -------------------------------------------------------------------------
# Bump BASE_STAGE when the base stage below changes in a way that needs a new base tree.
BASE_STAGE=3
base_key=$( { echo "$BASE_STAGE $suite $mirror"; hash_files image/packages.txt image/initramfs; } | sha256sum | cut -c1-16)
key=$( { echo "$base_key $pub_hex ${KEEL_IMAGE_VERSION:-}"; hash_files image overlays; sha256sum "$bin/keeld" "$bin/keel" | cut -c1-64; } | sha256sum | cut -c1-16)
if [ -z "${KEEL_IMAGE_FORCE:-}" ] && [ -f "$out/keel.key" ] && [ "$(cat "$out/keel.key")" = "$key" ] \
	&& [ -f "$out/keel.raw" ] && [ -f "$out/keel.qcow2" ] && [ -f "$out/keel-update.bundle" ]; then
	log "up to date ($key): $out/keel.raw, $out/keel.qcow2"
	exit 0
fi
started=$(date +%s)

mounts=()
cleanup() {
	local i
	for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[$i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
bind_chroot() {
	local r=$1
	mount -t proc proc "$r/proc" && mounts+=("$r/proc")
	mount -t sysfs sys "$r/sys" && mounts+=("$r/sys")
	mount --bind /dev "$r/dev" && mounts+=("$r/dev")
}
unbind_chroot() {
	local r=$1 m keep=()
	for m in "$r/dev" "$r/sys" "$r/proc" "$r/var/cache/apt/archives"; do umount "$m" 2>/dev/null || true; done
	for m in "${mounts[@]}"; do case "$m" in "$r"/*) ;; *) keep+=("$m") ;; esac; done
	mounts=("${keep[@]}")
}

# ---- base --------------------------------------------------------------------------------
base=$cache/base-$base_key
if [ ! -f "$base/.complete" ]; then
	log "base $base_key: building (packages: image/packages.txt)"
	tarball=$cache/debootstrap-$suite.tgz
	if [ ! -f "$tarball" ]; then
		log "debootstrap: downloading the $suite minbase packages once ($tarball)"
		rm -rf "$cache/dl" && mkdir -p "$cache/dl"
		debootstrap --variant=minbase --make-tarball="$tarball.tmp" "$suite" "$cache/dl" "$mirror" >"$cache/debootstrap-dl.log" 2>&1 \
			|| die "debootstrap --make-tarball failed: see $cache/debootstrap-dl.log"
		mv "$tarball.tmp" "$tarball"
		rm -rf "$cache/dl"
	fi
	rm -rf "$cache"/base-* 2>/dev/null || true
	tmp=$base.tmp
	rm -rf "$tmp"
	log "debootstrap: unpacking $suite minbase"
	debootstrap --variant=minbase --unpack-tarball="$tarball" "$suite" "$tmp" "$mirror" >"$cache/debootstrap.log" 2>&1 \
		|| die "debootstrap failed: see $cache/debootstrap.log"
	bind_chroot "$tmp"
	mkdir -p "$cache/apt-archives/partial"
	mount --bind "$cache/apt-archives" "$tmp/var/cache/apt/archives" && mounts+=("$tmp/var/cache/apt/archives")
	cat >"$tmp/etc/apt/sources.list" <<-EOF
		deb $mirror $suite main
		deb $mirror $suite-updates main
		deb ${mirror%/debian}/debian-security $suite-security main
	EOF
	printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d" && chmod +x "$tmp/usr/sbin/policy-rc.d"
	mkdir -p "$tmp/etc/initramfs-tools/conf.d" "$tmp/etc/initramfs-tools/hooks" "$tmp/etc/initramfs-tools/scripts/init-bottom"
	install -m 0644 "$here/initramfs/keel.conf" "$tmp/etc/initramfs-tools/conf.d/keel.conf"
	install -m 0755 "$here/initramfs/keel-hook" "$tmp/etc/initramfs-tools/hooks/keel"
	install -m 0755 "$here/initramfs/keel-data" "$tmp/etc/initramfs-tools/scripts/init-bottom/keel-data"
	# No docs, man pages or translations are ever unpacked.
	cat >"$tmp/etc/dpkg/dpkg.cfg.d/keel-nodoc" <<-'EOF'
		path-exclude=/usr/share/doc/*
		path-include=/usr/share/doc/*/copyright
		path-exclude=/usr/share/man/*
		path-exclude=/usr/share/info/*
		path-exclude=/usr/share/locale/*
		path-exclude=/usr/share/lintian/*
	EOF
	pkgs=$(grep -v '^\s*#' "$here/packages.txt" | xargs)
	log "apt: installing $(echo "$pkgs" | wc -w) packages and their dependencies"
	chroot "$tmp" /bin/sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confdef $pkgs" \
		>"$cache/apt.log" 2>&1 || die "apt-get install failed: see $cache/apt.log"
	# Kernel modules an appliance never loads (sound, cameras/TV, wireless).
	kver=$(ls "$tmp/lib/modules" | head -n 1)
	rm -rf "$tmp/lib/modules/$kver/kernel/sound" "$tmp/lib/modules/$kver/kernel/drivers/media" \
		"$tmp/lib/modules/$kver/kernel/drivers/net/wireless" "$tmp/lib/modules/$kver/kernel/net/wireless" \
		"$tmp/lib/modules/$kver/kernel/net/mac80211" "$tmp/lib/modules/$kver/kernel/drivers/bluetooth" \
		"$tmp/lib/modules/$kver/kernel/net/bluetooth" "$tmp/lib/modules/$kver/kernel/drivers/staging"
	chroot "$tmp" depmod -a "$kver"
	log "initramfs: building for $kver"
	chroot "$tmp" update-initramfs -c -k "$kver" >"$cache/initramfs.log" 2>&1 || chroot "$tmp" update-initramfs -u -k "$kver" >>"$cache/initramfs.log" 2>&1 \
		|| die "update-initramfs failed: see $cache/initramfs.log"
	rm -f "$tmp/usr/sbin/policy-rc.d"
	unbind_chroot "$tmp"
	# No package manager state is needed at run time.
	rm -rf "$tmp"/var/lib/apt/lists/* "$tmp"/var/cache/apt/*.bin "$tmp"/var/cache/debconf/*-old \
		"$tmp"/var/log/* "$tmp"/usr/share/man "$tmp"/usr/share/info "$tmp"/usr/share/lintian \
		"$tmp"/usr/share/locale/* "$tmp"/usr/share/bash-completion "$tmp"/usr/share/iso-codes \
		"$tmp"/var/cache/apt/archives/*.deb
	find "$tmp/usr/share/doc" -type f ! -name copyright -delete 2>/dev/null || true
	if chroot "$tmp" dpkg -l 2>/dev/null | awk '$1=="ii"{print $2}' | grep -E '^(gcc|g\+\+|cpp|clang|rustc|make)(-[0-9.]+)?$'; then
		die "a compiler got into the image"
	fi
	chroot "$tmp" dpkg-query -W -f '${Installed-Size}\t${Package}\n' | sort -rn >"$tmp/.packages-by-size"
	touch "$tmp/.complete"
	mv "$tmp" "$base"
	log "base $base_key: done in $(($(date +%s) - started)) s"
else
	log "base $base_key: cached"
fi

# ---- root --------------------------------------------------------------------------------
work=$out/work
if mountpoint -q "$work/root" 2>/dev/null; then umount -l "$work/root"; fi
rm -rf "$work" && mkdir -p "$work/upper" "$work/ovl" "$work/root"
mount -t overlay keel-image -o "lowerdir=$base,upperdir=$work/upper,workdir=$work/ovl" "$work/root"
mounts+=("$work/root")
root=$work/root
log "root: overlays, keeld and keel"
tar -C "$repo/overlays/rootfs" --owner=0 --group=0 -cf - . | tar -C "$root" -xf -
install -s -m 0755 "$bin/keeld" "$root/usr/bin/keeld"
install -s -m 0755 "$bin/keel" "$root/usr/bin/keel"
if [ -x "$root/usr/bin/keel-install" ] || [ -x "$bin/keel-install" ]; then
	[ -x "$bin/keel-install" ] && install -s -m 0755 "$bin/keel-install" "$root/usr/bin/keel-install"
fi
if [ -x "$bin/keel-update" ]; then install -s -m 0755 "$bin/keel-update" "$root/usr/bin/keel-update"; fi
mkdir -p "$root/usr/share/keel/update-keys"
printf '%s\n' "$pub_hex" >"$root/usr/share/keel/update-keys/$key_id.pub"
# The image's version: os-release IMAGE_ID/IMAGE_VERSION (keeld reports it; the updater
# refuses bundles that are not newer).
os_release=$root/usr/lib/os-release
rm -f "$root/etc/os-release" && ln -s ../usr/lib/os-release "$root/etc/os-release"
grep -v -E '^(PRETTY_NAME|IMAGE_ID|IMAGE_VERSION)=' "$base/usr/lib/os-release" >"$os_release.new"
printf 'PRETTY_NAME="Keel %s (Debian GNU/Linux 12)"\nIMAGE_ID=keel\nIMAGE_VERSION=%s\n' "$image_version" "$image_version" >>"$os_release.new"
mv "$os_release.new" "$os_release"
rm -f "$root/.complete" "$root/.packages-by-size"
mkdir -p "$root/data"
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
echo keel >"$root/etc/hostname"
# libvirt's NAT network is not Keel's; keeld owns networking.
rm -f "$root/etc/libvirt/qemu/networks/autostart/default.xml"
bind_chroot "$root"
chroot "$root" /bin/sh -c '
	set -e
	systemctl enable systemd-networkd.service keeld.service keel-issue.service keel-grow-data.service keel-boot-report.service keel-boot-check.service >/dev/null 2>&1
	systemctl disable apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer >/dev/null 2>&1 || true
	systemctl mask systemd-networkd-wait-online.service >/dev/null 2>&1 || true
	passwd -l root >/dev/null
' || die "enabling units in the image failed"
unbind_chroot "$root"
kver=$(ls "$root/lib/modules" | head -n 1)
cp "$root/boot/vmlinuz-$kver" "$work/vmlinuz"
cp "$root/boot/initrd.img-$kver" "$work/initrd.img"
printf '%s\n' "$key" >"$root/etc/keel-image-id"

log "root: squashfs (zstd)"
# Timestamps come from SOURCE_DATE_EPOCH (mksquashfs honours it). 256 KiB blocks: a random
# read (every exec and library during the boot) decompresses one block, so smaller blocks
# boot faster on a slow CPU (docs/PERFORMANCE.md); 1 MiB saved only a few MiB.
mksquashfs "$root" "$work/root.sqfs" -comp zstd -Xcompression-level 9 -b 256K -noappend -quiet \
	-wildcards -e 'boot/*' >/dev/null
umount "$root"
sqfs_bytes=$(stat -c %s "$work/root.sqfs")
[ "$sqfs_bytes" -le $((SLOT_MIB * 1024 * 1024)) ] || die "root squashfs is $sqfs_bytes bytes, over the ${SLOT_MIB} MiB slot"

# ---- esp ---------------------------------------------------------------------------------
log "esp: systemd-boot, kernel $kver, initrd"
# panic=30: a slot whose root cannot be mounted (or whose kernel panics) reboots, so
# systemd-boot counts the try and falls back (initramfs-tools reboots instead of a shell).
cmdline="root=PARTUUID=$ROOTA_GUID rootfstype=squashfs ro console=tty0 console=ttyS0,115200 quiet systemd.show_status=auto panic=30 keel.slot=a"
rm -f "$work/esp.img"
mkfs.vfat -C -F 32 -n KEEL-ESP -i 4b45454c "$work/esp.img" $((ESP_MIB * 1024)) >/dev/null
# Entries are keel-<generation>-<slot>[+tries].conf; systemd-boot starts the first match of
# keel-* in its order (entries with tries left first, then newest generation first).
printf 'default keel-*\ntimeout 0\nconsole-mode keep\neditor no\n' >"$work/loader.conf"
printf 'title Keel %s (slot A)\nversion %s\nlinux /keel/a/vmlinuz\ninitrd /keel/a/initrd.img\noptions %s\n' "$image_version" "$image_version" "$cmdline" >"$work/keel-a.conf"
mmd -i "$work/esp.img" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries ::/keel ::/keel/a
mcopy -i "$work/esp.img" /usr/lib/systemd/boot/efi/systemd-bootx64.efi ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$work/esp.img" "$work/loader.conf" ::/loader/loader.conf
mcopy -i "$work/esp.img" "$work/keel-a.conf" ::/loader/entries/keel-1-a.conf
mcopy -i "$work/esp.img" "$work/vmlinuz" ::/keel/a/vmlinuz
mcopy -i "$work/esp.img" "$work/initrd.img" ::/keel/a/initrd.img

# ---- update bundle -----------------------------------------------------------------------
# KEEL-UPDATE 1 <len>\n<manifest>\nsig ed25519 <key id> <hex>\n<root><vmlinuz><initrd.img>
# (format: system/update/src/bundle.rs).
log "bundle: $image_version signed by $key_id"
entry_json() { printf '{"name":"%s","size":%s,"sha256":"%s"}' "$1" "$(stat -c %s "$2")" "$(sha256sum "$2" | cut -c1-64)"; }
printf '{"format":1,"version":"%s","build":"%s","files":[%s,%s,%s]}' "$image_version" "$key" \
	"$(entry_json root "$work/root.sqfs")" "$(entry_json vmlinuz "$work/vmlinuz")" "$(entry_json initrd.img "$work/initrd.img")" \
	>"$work/manifest.json"
openssl pkeyutl -sign -inkey "$signing_key" -rawin -in "$work/manifest.json" -out "$work/manifest.sig" 2>/dev/null \
	|| die "signing the bundle manifest failed"
{
	printf 'KEEL-UPDATE 1 %s\n' "$(stat -c %s "$work/manifest.json")"
	cat "$work/manifest.json"
	printf '\nsig ed25519 %s %s\n' "$key_id" "$(od -An -tx1 -v "$work/manifest.sig" | tr -d ' \n')"
	cat "$work/root.sqfs" "$work/vmlinuz" "$work/initrd.img"
} >"$out/keel-update.bundle.tmp"
mv "$out/keel-update.bundle.tmp" "$out/keel-update.bundle"

# ---- data --------------------------------------------------------------------------------
rm -f "$work/data.img"
mkfs.ext4 -q -F -L KEEL-DATA -U "$DATA_GUID" -E "root_owner=0:0,hash_seed=$DATA_GUID" "$work/data.img" "${DATA_MIB}M"

# ---- disk --------------------------------------------------------------------------------
log "disk: GPT esp, root-a, root-b, data"
mib=$((1024 * 1024))
esp_start=1
roota_start=$((esp_start + ESP_MIB))
rootb_start=$((roota_start + SLOT_MIB))
data_start=$((rootb_start + SLOT_MIB))
total_mib=$((data_start + DATA_MIB + 1))
raw=$out/keel.raw.tmp
rm -f "$raw"
truncate -s $((total_mib * mib)) "$raw"
s() { echo $(($1 * 2048)); }
sgdisk -Z "$raw" >/dev/null 2>&1 || true
sgdisk -U "$DISK_GUID" \
	-n "1:$(s $esp_start):$(($(s $roota_start) - 1))" -t 1:EF00 -c 1:esp -u "1:$ESP_GUID" \
	-n "2:$(s $roota_start):$(($(s $rootb_start) - 1))" -t 2:8304 -c 2:root-a -u "2:$ROOTA_GUID" \
	-n "3:$(s $rootb_start):$(($(s $data_start) - 1))" -t 3:8304 -c 3:root-b -u "3:$ROOTB_GUID" \
	-n "4:$(s $data_start):$(($(s $((data_start + DATA_MIB))) - 1))" -t 4:8300 -c 4:data -u "4:$DATA_GUID" \
	"$raw" >/dev/null
dd if="$work/esp.img" of="$raw" bs=1M seek=$esp_start conv=notrunc,sparse status=none
dd if="$work/root.sqfs" of="$raw" bs=1M seek=$roota_start conv=notrunc,sparse status=none
dd if="$work/data.img" of="$raw" bs=1M seek=$data_start conv=notrunc,sparse status=none
sgdisk -v "$raw" >/dev/null || die "the partition table does not verify"
qemu-img convert -f raw -O qcow2 "$raw" "$out/keel.qcow2.tmp"
mv "$raw" "$out/keel.raw"
mv "$out/keel.qcow2.tmp" "$out/keel.qcow2"
printf '%s\n' "$key" >"$out/keel.key"
cp "$base/.packages-by-size" "$out/packages-by-size.txt"
{
	echo "key: $key"
	echo "version: $image_version (signed by $key_id)"
	echo "bundle: $(($(stat -c %s "$out/keel-update.bundle") / mib)) MiB"
	echo "kernel: $kver"
	echo "root squashfs: $sqfs_bytes bytes ($((sqfs_bytes / mib)) MiB of the ${SLOT_MIB} MiB slot)"
	echo "root tree: $(du -sm --exclude=./boot "$base" | cut -f1) MiB uncompressed"
	echo "kernel + initrd: $(($(stat -c %s "$work/vmlinuz") / 1024)) KiB + $(($(stat -c %s "$work/initrd.img") / 1024)) KiB"
	echo "raw: $(stat -c %s "$out/keel.raw") bytes, $(du -m "$out/keel.raw" | cut -f1) MiB allocated"
	echo "qcow2: $(du -m "$out/keel.qcow2" | cut -f1) MiB"
	echo "build: $(($(date +%s) - started)) s"
} >"$out/manifest.txt"
cat "$out/manifest.txt" >&2
log "done: $out/keel.raw, $out/keel.qcow2, $out/keel-update.bundle ($image_version)"
