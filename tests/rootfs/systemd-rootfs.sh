#!/bin/sh
# Builds a minimal Debian rootfs with systemd and the D-Bus system bus, for booting test machines
# with systemd-nspawn (fleet's systemd tests) . Usage: systemd-rootfs.sh DIR
# Idempotent: a complete DIR (marked by DIR/.corelite-complete) is left as it is.
# The mirror is read from this machine's apt sources; no mirror name is written here.
set -eu
DIR=${1:?usage: systemd-rootfs.sh DIR}
[ -e "$DIR/.corelite-complete" ] && exit 0

mirror() {
    if [ -r /etc/apt/sources.list.d/debian.sources ]; then
        awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources
    elif [ -r /etc/apt/sources.list ]; then
        awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }' /etc/apt/sources.list
    fi
}
MIRROR=$(mirror)
if [ -z "$MIRROR" ]; then
    echo "systemd-rootfs: no Debian mirror found in /etc/apt/sources.list*" >&2
    exit 1
fi
SUITE=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")

TMP="$DIR.tmp.$$"
rm -rf "$TMP"
trap 'rm -rf "$TMP"' EXIT
mmdebstrap --quiet --variant=minbase --include=systemd,systemd-sysv,dbus,iproute2 \
    "$SUITE" "$TMP" "$MIRROR"
# Quiet, quick boots: no console getty, no time sync, no firstboot questions.
ln -sf /dev/null "$TMP/etc/systemd/system/console-getty.service"
ln -sf /dev/null "$TMP/etc/systemd/system/systemd-timesyncd.service"
ln -sf /dev/null "$TMP/etc/systemd/system/systemd-firstboot.service"
: > "$TMP/etc/machine-id"
touch "$TMP/.corelite-complete"
rm -rf "$DIR"
mv "$TMP" "$DIR"
trap - EXIT
