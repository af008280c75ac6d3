#!/bin/sh
# Installs the Debian packages that building, testing, benchmarking and the demo use.
# Idempotent: does nothing when everything is present. Needs root (or sudo).
set -eu

PACKAGES="protobuf-compiler libprotobuf-dev etcd-client etcd-server curl jq busybox-static
    systemd-container mmdebstrap iproute2 util-linux
    libseccomp-dev pkg-config podman runc crun
    skopeo umoci docker-registry iptables
    qemu-system-x86 qemu-utils syslinux syslinux-common mtools dosfstools fdisk"

missing=""
for p in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
if [ -z "$missing" ]; then
    echo "deps: all packages present"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "deps: installing$missing"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
