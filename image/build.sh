#!/bin/sh
# Builds the corelite image: a minimal Debian (systemd, D-Bus, udev, systemd-networkd, iptables,
# OpenSSH server, sudo, systemd-timesyncd, Debian's cloud kernel) with corelite's binaries and
# systemd-units/.
#
# Usage: image/build.sh OUT_DIR     (from the repository root, after `make build dist`)
# Outputs in OUT_DIR:
#   vmlinuz, initrd.img     for direct (PXE-style) boot: root=LABEL=corelite-root
#   corelite.raw            a bootable disk: MBR + syslinux on a FAT boot partition, ext4 root
#   corelite.qcow2          the same disk, compressed
#   SIZES                   what each weighs
#   PACKAGES                the Debian packages in the image, with their versions
# The Debian part is cached in target/image-cache (keyed by the package list); the mirror is
# read from this machine's apt sources.
set -eu
OUT=${1:?usage: image/build.sh OUT_DIR}
REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=$REPO/target/image-cache
BIN=${BIN:-$REPO/target/release}
RKT=${RKT:-$REPO/target/x86_64-unknown-linux-gnu/dist/rkt}
PACKAGES="systemd,systemd-sysv,dbus,udev,kmod,iproute2,iptables,util-linux,e2fsprogs,linux-image-cloud-amd64,initramfs-tools,openssh-server,sudo,systemd-timesyncd"
# The initramfs only needs to find the root disk: a short module list (Debian's default,
# MODULES=most, takes every storage driver, which costs seconds to unpack under emulation).
INITRAMFS_MODULES="virtio_pci virtio_blk virtio_scsi sd_mod ahci ata_piix nvme"
ROOT_FREE_MB=${ROOT_FREE_MB:-384}
BOOT_KB=98304

step() { printf '\033[1m==> %s\033[0m\n' "$*"; }
for f in "$BIN/etcd-lite" "$BIN/fleetd" "$BIN/fleetctl" "$BIN/corelite-firstboot" "$RKT"; do
    [ -x "$f" ] || { echo "image: $f is missing: run make build dist first" >&2; exit 1; }
done
for t in mmdebstrap mkfs.ext4 mkfs.vfat mcopy syslinux sfdisk qemu-img umoci; do
    command -v "$t" >/dev/null || { echo "image: $t is missing: run make deps" >&2; exit 1; }
done

mirror() {
    if [ -r /etc/apt/sources.list.d/debian.sources ]; then
        awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources
    elif [ -r /etc/apt/sources.list ]; then
        awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }' /etc/apt/sources.list
    fi
}

# 1. The Debian base, cached.
KEY=$(echo "$PACKAGES $INITRAMFS_MODULES" | sha256sum | cut -c1-12)
BASE=$CACHE/base-$KEY
if [ ! -e "$BASE/.corelite-complete" ]; then
    MIRROR=$(mirror)
    [ -n "$MIRROR" ] || { echo "image: no Debian mirror in /etc/apt/sources.list*" >&2; exit 1; }
    SUITE=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
    step "debian base ($SUITE: $PACKAGES)"
    rm -rf "$BASE.tmp"
    mkdir -p "$CACHE"
    mmdebstrap --quiet --variant=minbase --include="$PACKAGES" \
        --setup-hook='mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/usr/share/initramfs-tools/modules.d"' \
        --setup-hook='echo MODULES=list >"$1/etc/initramfs-tools/conf.d/corelite"' \
        --setup-hook="printf '%s\\n' $INITRAMFS_MODULES >\"\$1/usr/share/initramfs-tools/modules.d/corelite\"" \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        "$SUITE" "$BASE.tmp" "$MIRROR"
    rm -rf "$BASE.tmp/var/cache/apt/"*.bin "$BASE.tmp/var/lib/apt/lists/"*
    touch "$BASE.tmp/.corelite-complete"
    rm -rf "$BASE"
    mv "$BASE.tmp" "$BASE"
fi

# 2. corelite on top, in a fresh copy.
step "corelite files"
ROOT=$CACHE/root
rm -rf "$ROOT"
cp -a "$BASE" "$ROOT"
rm -f "$ROOT/.corelite-complete"
for b in etcd-lite fleetd fleetctl corelite-firstboot; do
    install -m 0755 "$BIN/$b" "$ROOT/usr/bin/$b"
    strip "$ROOT/usr/bin/$b"
done
install -m 0755 "$RKT" "$ROOT/usr/bin/rkt"
for u in "$REPO"/systemd-units/*; do install -m 0644 "$u" "$ROOT/usr/lib/systemd/system/"; done
cp -a "$REPO/image/files/." "$ROOT/"
W=$ROOT/etc/systemd/system
mkdir -p "$W/multi-user.target.wants" "$W/sysinit.target.wants" "$W/timers.target.wants" "$W/local-fs.target.wants" \
    "$W/sockets.target.wants" "$W/network-online.target.wants"
ln -sf /usr/lib/systemd/system/etcd-lite.service "$W/multi-user.target.wants/etcd-lite.service"
ln -sf /usr/lib/systemd/system/etcd-lite-gateway.service "$W/multi-user.target.wants/etcd-lite-gateway.service"
ln -sf /usr/lib/systemd/system/fleetd.service "$W/multi-user.target.wants/fleetd.service"
ln -sf /usr/lib/systemd/system/fleetd.socket "$W/sockets.target.wants/fleetd.socket"
ln -sf /usr/lib/systemd/system/corelite-firstboot.service "$W/sysinit.target.wants/corelite-firstboot.service"
ln -sf /usr/lib/systemd/system/rkt-gc.timer "$W/timers.target.wants/rkt-gc.timer"
ln -sf ../usr.mount "$W/local-fs.target.wants/usr.mount"
ln -sf /lib/systemd/system/systemd-networkd.service "$W/multi-user.target.wants/systemd-networkd.service"
ln -sf /lib/systemd/system/systemd-networkd.socket "$W/sockets.target.wants/systemd-networkd.socket"
ln -sf /lib/systemd/system/systemd-networkd-wait-online.service "$W/network-online.target.wants/systemd-networkd-wait-online.service"
ln -sf /usr/lib/systemd/system/corelite-ssh-keys.service "$W/multi-user.target.wants/corelite-ssh-keys.service"
ln -sf /usr/lib/systemd/system/corelite-etcd-auth.service "$W/multi-user.target.wants/corelite-etcd-auth.service"
ln -sf /usr/lib/systemd/system/corelite-clock-check.service "$W/multi-user.target.wants/corelite-clock-check.service"
ln -sf /lib/systemd/system/ssh.service "$W/multi-user.target.wants/ssh.service"
ln -sf /lib/systemd/system/systemd-timesyncd.service "$W/sysinit.target.wants/systemd-timesyncd.service"
# What a container host does not use (each unit costs boot time under emulation).
for m in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
    fstrim.timer dpkg-db-backup.timer systemd-firstboot.service e2scrub_reap.service \
    getty@tty1.service systemd-pstore.service dev-hugepages.mount sys-kernel-debug.mount \
    sys-kernel-tracing.mount sys-fs-fuse-connections.mount proc-sys-fs-binfmt_misc.automount \
    systemd-binfmt.service modprobe@drm.service modprobe@efi_pstore.service \
    modprobe@dm_mod.service modprobe@loop.service modprobe@fuse.service \
    systemd-udev-settle.service; do
    ln -sf /dev/null "$W/$m"
done
: >"$ROOT/etc/machine-id"
rm -f "$ROOT/var/lib/dbus/machine-id"
echo corelite >"$ROOT/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tcorelite\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$ROOT/etc/hosts"
printf 'LABEL=corelite-root / ext4 rw,noatime 0 1\n' >"$ROOT/etc/fstab"
passwd -R "$ROOT" -d root >/dev/null
# SSH: host keys are made on each node's first boot (never shared through the image); the
# `core` user logs in with the keys of the node's first-boot config and has sudo.
rm -f "$ROOT"/etc/ssh/ssh_host_*
useradd --root "$ROOT" --create-home --uid 1000 --user-group --groups sudo --shell /bin/bash core
usermod --root "$ROOT" --password '*' core
printf 'core ALL=(ALL) NOPASSWD:ALL\n' >"$ROOT/etc/sudoers.d/core"
chmod 0440 "$ROOT/etc/sudoers.d/core"
mkdir -p "$ROOT/etc/ssh/authorized_keys"
# The busybox image rkt runs in the demo and tests, shipped as an OCI layout.
if [ ! -e "$CACHE/busybox-oci/index.json" ]; then
    "$REPO/tests/images/busybox-image.sh" "$CACHE/busybox-oci"
fi
mkdir -p "$ROOT/usr/share/corelite/images"
cp -a "$CACHE/busybox-oci" "$ROOT/usr/share/corelite/images/busybox"

# 3. Kernel and initramfs for direct boot.
step "kernel and initramfs"
mkdir -p "$OUT"
# What went in, for telling two builds apart: every Debian package with its version.
dpkg-query --admindir="$ROOT/var/lib/dpkg" -W -f='${Package} ${Version}\n' >"$OUT/PACKAGES"
cp "$(ls "$ROOT"/boot/vmlinuz-* | tail -1)" "$OUT/vmlinuz"
cp "$(ls "$ROOT"/boot/initrd.img-* | tail -1)" "$OUT/initrd.img"

# 4. The disk: MBR (syslinux) | FAT boot partition (kernel, initrd) | ext4 root.
step "disk image"
USED_MB=$(du -sm "$ROOT" | cut -f1)
ROOT_MB=$((USED_MB + USED_MB / 5 + ROOT_FREE_MB))
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkfs.ext4 -q -F -L corelite-root -d "$ROOT" "$WORK/root.ext4" "${ROOT_MB}M"
mkfs.vfat -C -n COREBOOT "$WORK/boot.vfat" "$BOOT_KB" >/dev/null
cat >"$WORK/syslinux.cfg" <<CFG
SERIAL 0 115200
DEFAULT corelite
PROMPT 0
TIMEOUT 0
LABEL corelite
  LINUX /vmlinuz
  INITRD /initrd.img
  APPEND root=LABEL=corelite-root rw console=ttyS0,115200 quiet
CFG
mcopy -i "$WORK/boot.vfat" "$OUT/vmlinuz" "$OUT/initrd.img" "$WORK/syslinux.cfg" ::
syslinux --install "$WORK/boot.vfat"
BOOT_SECTORS=$((BOOT_KB * 2))
ROOT_SECTORS=$((ROOT_MB * 2048))
TOTAL_SECTORS=$((2048 + BOOT_SECTORS + ROOT_SECTORS))
RAW="$OUT/corelite.raw.tmp"
rm -f "$RAW"
truncate -s $((TOTAL_SECTORS * 512)) "$RAW"
sfdisk --quiet "$RAW" <<PARTS
label: dos
start=2048, size=$BOOT_SECTORS, type=c, bootable
start=$((2048 + BOOT_SECTORS)), size=$ROOT_SECTORS, type=83
PARTS
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$RAW" bs=440 count=1 conv=notrunc status=none
dd if="$WORK/boot.vfat" of="$RAW" bs=512 seek=2048 conv=notrunc,sparse status=none
dd if="$WORK/root.ext4" of="$RAW" bs=512 seek=$((2048 + BOOT_SECTORS)) conv=notrunc,sparse status=none
step "qcow2 (compressed)"
qemu-img convert -c -O qcow2 "$RAW" "$OUT/corelite.qcow2.tmp"
mv "$OUT/corelite.qcow2.tmp" "$OUT/corelite.qcow2"

mv "$RAW" "$OUT/corelite.raw"
RAW="$OUT/corelite.raw"
size() { du -m --apparent-size "$1" | cut -f1; }
{
    echo "root filesystem used: ${USED_MB} MiB"
    echo "corelite.raw: $(size "$RAW") MiB (uncompressed disk)"
    echo "corelite.qcow2: $(size "$OUT/corelite.qcow2") MiB (compressed)"
    echo "vmlinuz: $(size "$OUT/vmlinuz") MiB, initrd.img: $(size "$OUT/initrd.img") MiB"
} | tee "$OUT/SIZES"
