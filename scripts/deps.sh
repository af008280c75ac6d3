#!/bin/sh
# Installs the Debian packages that building, testing, benchmarking and the demo use.
# gcc: the linker, and it builds mimalloc (etcd-lite's allocator).
# Idempotent: does nothing when everything is present. Needs root (or sudo).
set -eu

PACKAGES="gcc protobuf-compiler libprotobuf-dev etcd-client etcd-server etcd-discovery dnsmasq-base curl jq busybox-static
    systemd-container mmdebstrap iproute2 util-linux
    libseccomp-dev pkg-config podman runc crun openssh-client openssl
    skopeo umoci docker-registry iptables
    qemu-system-x86 qemu-utils syslinux syslinux-common mtools dosfstools fdisk"

missing_packages() {
    for p in $PACKAGES; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
            printf ' %s' "$p"
        fi
    done
}
missing=$(missing_packages)
if [ -z "$missing" ]; then
    echo "deps: all packages present"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "deps: installing$missing"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
# An install can remove a package that was present: a backported qemu-utils gives way to the
# release's qemu-system-x86. A second pass installs what is missing now, from the release.
missing=$(missing_packages)
if [ -n "$missing" ]; then
    echo "deps: installing$missing (removed by the first pass)"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi
missing=$(missing_packages)
[ -z "$missing" ] || { echo "deps: could not install$missing" >&2; exit 1; }
