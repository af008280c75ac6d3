#!/bin/sh
# `make demo`: boots a three-node corelite cluster from the image (`make image`) under qemu (TCG)
# and runs a container through fleetctl. The cluster's configs come from `corelite-config
# new-cluster` (a CA, TLS certificates for every node, an admin client certificate in
# target/demo/pki, an SSH key in target/demo/ssh): every port is TLS with client certificates,
# SSH takes only that key. The nodes sit on a bridge inside a network namespace made here
# (corelite-demo), so the cluster exists only on this machine. Node 1 and 2 boot the disk image
# with a config drive, node 3 boots the kernel and initrd directly with its config on the kernel
# command line. It keeps running; `make demo-down` (this script with `down`) stops it.
# Needs root.
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd)
STATE="$ROOT/target/demo"
IMAGE="$ROOT/target/image"
NS=corelite-demo
NET=10.219.0
NODES="1 2 3"
IN="nsenter --net=/run/netns/$NS --"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; sh -c "$*"; }

down() {
    [ -d "$STATE" ] || { echo "demo: nothing is running"; return 0; }
    for i in $NODES; do
        pidf="$STATE/node$i.pid"
        if [ -f "$pidf" ]; then
            pid=$(cat "$pidf")
            # Only our own qemu: the pid file is written by qemu itself (-pidfile).
            if [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = qemu-system-x86 ]; then kill "$pid"; fi
        fi
    done
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$STATE"
    echo "demo: stopped"
}

if [ "${1:-}" = down ]; then
    down
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "demo: needs root (a network namespace with taps)" >&2
    exit 1
fi
if [ -d "$STATE" ]; then
    echo "demo: already running (make demo-down stops it)" >&2
    exit 1
fi
for f in corelite.raw vmlinuz initrd.img; do
    [ -f "$IMAGE/$f" ] || { echo "demo: $IMAGE/$f missing; run make image" >&2; exit 1; }
done

START=$(date +%s)
mkdir -p "$STATE"
trap 'echo "demo: failed; make demo-down cleans up" >&2' EXIT
say "private network: bridge br0 ($NET.1/24) in network namespace $NS"
ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" link add br0 type bridge
ip -n "$NS" addr add "$NET.1/24" dev br0
ip -n "$NS" link set br0 up

say "cluster config: corelite-config new-cluster (CA, certificates, SSH key) in $STATE"
mkdir -p "$STATE/ssh"
ssh-keygen -q -t ed25519 -N "" -C corelite-demo -f "$STATE/ssh/id_ed25519"
"$ROOT/target/release/corelite-config" new-cluster \
    --nodes "node1=$NET.11,node2=$NET.12,node3=$NET.13" --gateway "$NET.1" \
    --ssh-key "$STATE/ssh/id_ed25519.pub" --token corelite-demo --out "$STATE" >/dev/null
for i in $NODES; do
    # What an operator may add to a generated config: fleet metadata, a short agent TTL.
    jq --arg n "n$i" '.fleet = {"metadata": {"node": $n}, "agent_ttl": 10}' \
        "$STATE/nodes/node$i.json" >"$STATE/node$i.json"
    "$ROOT/target/release/corelite-firstboot" --check "$STATE/node$i.json" >/dev/null
    # Backed by the raw disk: under emulation, decompressing the qcow2 costs boot time.
    qemu-img create -q -f qcow2 -F raw -b "$IMAGE/corelite.raw" "$STATE/node$i.qcow2"
    ip -n "$NS" tuntap add "tap$i" mode tap
    ip -n "$NS" link set "tap$i" master br0 up
    set -- -accel tcg -smp 1 -m 512 -display none -monitor none -daemonize \
        -pidfile "$STATE/node$i.pid" -serial "file:$STATE/node$i.console" \
        -drive "file=$STATE/node$i.qcow2,if=virtio,format=qcow2" \
        -netdev "tap,id=n0,ifname=tap$i,script=no,downscript=no" \
        -device "virtio-net-pci,netdev=n0,mac=52:54:00:19:00:0$i"
    if [ "$i" = 3 ]; then
        # Gzipped: the command line holds 2048 bytes, and the config carries certificates.
        CFG64=$(gzip -9c "$STATE/node$i.json" | base64 -w0)
        say "node$i: direct kernel boot, config on the kernel command line"
        $IN qemu-system-x86_64 "$@" -kernel "$IMAGE/vmlinuz" -initrd "$IMAGE/initrd.img" \
            -append "root=LABEL=corelite-root rw console=ttyS0,115200 quiet corelite.config=gz64:$CFG64"
    else
        mkfs.vfat -C -n CORELITE "$STATE/node$i-config.img" 1440 >/dev/null
        mcopy -i "$STATE/node$i-config.img" "$STATE/node$i.json" ::config.json
        say "node$i: disk boot, config drive"
        $IN qemu-system-x86_64 "$@" -drive "file=$STATE/node$i-config.img,if=virtio,format=raw,readonly=on"
    fi
done

PKI="$STATE/pki"
CERTS="--cacert $PKI/ca.pem --cert $PKI/admin.pem --key $PKI/admin-key.pem"
ETCDCTL="$IN env ETCDCTL_API=3 etcdctl --endpoints https://$NET.11:2379,https://$NET.12:2379,https://$NET.13:2379 $CERTS"
FLEETCTL="$IN $ROOT/target/release/fleetctl --endpoint https://$NET.11:49153 --ca-file $PKI/ca.pem --cert-file $PKI/admin.pem --key-file $PKI/admin-key.pem"
say "waiting for the etcd-lite cluster to elect a leader (consoles: $STATE/node*.console)"
n=0
until $ETCDCTL endpoint status 2>/dev/null | grep -q true; do
    n=$((n + 1)); [ $n -lt 300 ] || { echo "demo: no leader after 10 min" >&2; exit 1; }
    printf '.'; sleep 2
done
echo " leader after $(($(date +%s) - START)) s"
say "waiting for fleet to see 3 machines"
until [ "$($FLEETCTL list-machines --no-legend 2>/dev/null | wc -l)" = 3 ]; do printf '.'; sleep 2; done
echo " cluster ready after $(($(date +%s) - START)) s"
READY=$(($(date +%s) - START))
step "$ETCDCTL member list"
step "$FLEETCTL list-machines"

if [ "${BENCH:-}" = 1 ]; then
    # `make bench`: boot-to-ready time, image sizes, and each node's memory in use (MemTotal -
    # MemAvailable) with etcd-lite, fleetd and systemd idle for 20 s.
    cat >"$STATE/meminfo.service" <<'UNIT'
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'sleep 20; grep -E "^(MemTotal|MemAvailable):" /proc/meminfo'

[X-Fleet]
Global=true
UNIT
    $FLEETCTL start --no-block "$STATE/meminfo.service" >/dev/null
    echo
    echo "image benchmark (3 nodes, qemu TCG, 1 vCPU and 512 MiB each, on this machine):"
    echo "  boot to cluster ready (etcd leader + 3 fleet machines): ${READY} s (target < 60 s)"
    sed 's/^/  /' "$IMAGE/SIZES"
    for m in $($FLEETCTL list-machines --no-legend -l 2>/dev/null | awk '{print $1}'); do
        n=0
        until $FLEETCTL journal --machine "$m" -n 5 meminfo.service 2>/dev/null | grep -q MemAvailable; do
            n=$((n + 1)); [ $n -lt 60 ] || break
            sleep 2
        done
        $FLEETCTL journal --machine "$m" -n 5 meminfo.service 2>/dev/null | awk -v m="$(echo "$m" | cut -c1-8)" '
            /MemTotal:/ {t=$(NF-1)} /MemAvailable:/ {a=$(NF-1)}
            END {if (t) printf "  machine %s: base system memory in use %d MiB of %d MiB (target < 150 MiB)\n", m, (t-a)/1024, t/1024}'
    done
    trap - EXIT
    down
    exit 0
fi

cat >"$STATE/hello.service" <<'UNIT'
[Unit]
Description=hello: a busybox pod run by rkt, placed by fleet

[Service]
ExecStartPre=/usr/bin/rkt fetch oci:/usr/share/corelite/images/busybox:latest
# %H is the node's host name (the pod has its own); $$ is a literal $ for systemd.
ExecStart=/usr/bin/rkt run --net=host --name hello --set-env NODE=%H localhost/busybox -- sh -c 'while true; do echo "hello from an rkt pod on $$NODE"; sleep 5; done'
ExecStopPost=/usr/bin/rkt gc --grace-period=0s
UNIT
step "$FLEETCTL start $STATE/hello.service"
n=0
until $FLEETCTL journal -n 3 hello.service 2>/dev/null | grep -q "hello from"; do
    n=$((n + 1)); [ $n -lt 60 ] || break
    sleep 2
done
step "$FLEETCTL list-units"
step "$FLEETCTL journal -n 3 hello.service"
trap - EXIT
cat <<EOF

The cluster runs in network namespace $NS (make demo-down stops it). Every port is TLS with
client certificates (the admin's are in $PKI); SSH takes the demo's key. Reach it with:
  $IN $ROOT/target/release/fleetctl --endpoint https://$NET.11:49153 --ca-file $PKI/ca.pem --cert-file $PKI/admin.pem --key-file $PKI/admin-key.pem list-units
  $IN env ETCDCTL_API=3 etcdctl --endpoints https://$NET.11:2379 $CERTS put /hello world
  $IN curl -s $CERTS https://$NET.12:2379/v2/keys/hello
  $IN ssh -i $STATE/ssh/id_ed25519 core@$NET.11
  ssh-add $STATE/ssh/id_ed25519 && $IN $ROOT/target/release/fleetctl --tunnel $NET.11 list-machines
  . $STATE/env    # sets ETCDCTL_* and FLEETCTL_* (endpoints, certificates) for this shell
Plain http:// to any of them is refused, and so is TLS without a client certificate.
Consoles: $STATE/node{1,2,3}.console
EOF
