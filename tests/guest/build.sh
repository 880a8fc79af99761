#!/bin/bash
# Builds Keel's tiny test guest from Debian packages, offline, in a few seconds.
#
#   tests/guest/build.sh OUT_DIR
#
# OUT_DIR gets:
#   vmlinuz      the host's Debian kernel (/boot/vmlinuz-*, package linux-image-amd64)
#   initrd.img   a busybox-static initramfs whose /init mounts proc, sys and dev, powers off on
#                the ACPI power button, and prints "keel-guest counter N" to ttyS0 once a second
#   cmdline      the kernel command line for direct kernel boot
#   disk.raw     a bootable raw disk: MBR (syslinux mbr.bin) + one FAT16 partition holding
#                vmlinuz, initrd.img and a syslinux config with the same command line
#
# Idempotent: a stamp holds a hash of every input; when it matches, nothing is rebuilt. Outputs
# are written to a staging directory and renamed into place, so a failed run never leaves a
# half-written guest behind. The initramfs is reproducible (fixed times, sorted entries).
#
# Overrides: KEEL_GUEST_KERNEL (kernel image), KEEL_GUEST_BUSYBOX (a static busybox).
# Packages: linux-image-amd64 busybox-static cpio gzip syslinux syslinux-common mtools dosfstools
# (system/virt/APT_PACKAGES lists them for CI).
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
moddir=/lib/modules/$kver/kernel/drivers
modules=()
for m in "$moddir/input/evdev.ko" "$moddir/acpi/button.ko"; do
    [ -r "$m" ] && modules+=("$m")
done

# The flags after "quiet" skip work that only slows a TCG boot (about 1.5 s of 7.5 s here):
# speculation mitigations, KASLR, TSC calibration and the timer check.
cmdline="console=ttyS0 panic=-1 quiet mitigations=off nokaslr tsc=reliable no_timer_check"

stamp_of() {
    {
        echo "$cmdline"
        sha256sum "$0" "$kernel" "$busybox" "$mbr" "${modules[@]}"
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
mkdir -p "$root"/{bin,dev,proc,sys,tmp,lib/modules}
cp "$busybox" "$root/bin/busybox"
for applet in sh mount echo sleep insmod cat grep dd poweroff; do
    ln -s busybox "$root/bin/$applet"
done
for m in "${modules[@]}"; do
    cp "$m" "$root/lib/modules/"
done
cat >"$root/init" <<'INIT'
#!/bin/sh
# Keel test guest: mount the basics, arm the power button, count forever on ttyS0.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in /lib/modules/evdev.ko /lib/modules/button.ko; do
    [ -f "$m" ] && insmod "$m" 2>/dev/null
done
# ACPI shutdown: block on every "Power Button" input device; the first event powers off.
# Armed in the background, once the input devices have appeared, so counting starts at once.
(
    sleep 1
    for ev in /sys/class/input/event*; do
        [ -r "$ev/device/name" ] || continue
        if grep -q "Power Button" "$ev/device/name"; then
            (dd if="/dev/input/${ev##*/}" of=/dev/null bs=24 count=1 2>/dev/null
             echo "keel-guest power button" >/dev/ttyS0
             poweroff -f) &
        fi
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
