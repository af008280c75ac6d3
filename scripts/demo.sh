#!/bin/sh
# `make demo`: boots a three-node corelite cluster on this machine and runs a container through
# fleetctl. Until the bootable qemu image exists, the nodes are systemd-nspawn machines booted
# from a minimal Debian rootfs (tests/rootfs/systemd-rootfs.sh) with corelite's binaries and
# systemd-units/; each runs etcd-lite (together one 3-member cluster) and fleetd as systemd
# services, in its own network namespace on a bridge that exists only inside a namespace made
# here. The cluster keeps running; `make demo-down` (this script with `down`) stops it all.
# Needs root.
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd)
STATE="$ROOT/target/demo"
BIN="$ROOT/target/release"
NET=10.218.0
HUB=corelite-demo-hub
NODES="1 2 3"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; sh -c "$*"; }

down() {
    [ -d "$STATE" ] || { echo "demo: nothing is running"; return 0; }
    for i in $NODES; do
        pidf="$STATE/m$i/nspawn.pid"
        if [ -f "$pidf" ]; then
            pid=$(cat "$pidf")
            if kill -0 "$pid" 2>/dev/null; then
                kill -TERM "$pid" 2>/dev/null || true   # nspawn powers the machine off
                n=0
                while kill -0 "$pid" 2>/dev/null && [ $n -lt 150 ]; do sleep 0.2; n=$((n + 1)); done
                kill -KILL "$pid" 2>/dev/null || true
            fi
        fi
        mountpoint -q "$STATE/m$i/merged" 2>/dev/null && umount "$STATE/m$i/merged"
        ip netns del "corelite-demo-m$i" 2>/dev/null || true
    done
    ip netns del "$HUB" 2>/dev/null || true
    if [ -f "$STATE/nspawn-tmpfs" ]; then umount /run/systemd/nspawn 2>/dev/null || true; fi
    rm -rf "$STATE"
    echo "demo: stopped"
}

if [ "${1:-}" = down ]; then
    down
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "demo: needs root (network namespaces, systemd-nspawn)" >&2
    exit 1
fi
if [ -d "$STATE" ]; then
    echo "demo: already running (make demo-down stops it)" >&2
    exit 1
fi
for t in "$BIN/etcd-lite" "$BIN/fleetd" "$BIN/fleetctl" "$BIN/rkt"; do
    [ -x "$t" ] || { echo "demo: $t missing; run make build" >&2; exit 1; }
done

START=$(date +%s)
mkdir -p "$STATE"
trap 'echo "demo: failed; cleaning up" >&2; down' EXIT INT TERM

say "building the node rootfs (cached in target/test-cache; about 30 s the first time)"
ROOTFS="$ROOT/target/test-cache/systemd-rootfs"
mkdir -p "$ROOT/target/test-cache"
./tests/rootfs/systemd-rootfs.sh "$ROOTFS"

say "making the container bundle (busybox)"
B="$STATE/hello"
mkdir -p "$B/rootfs/bin" "$B/rootfs/proc" "$B/rootfs/dev" "$B/rootfs/sys" "$B/rootfs/tmp"
cp /bin/busybox "$B/rootfs/bin/busybox"
for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -s busybox "$B/rootfs/bin/$applet"
done
"$BIN/rkt" spec --bundle "$B"
jq '.process.terminal = false
    | .process.args = ["sh", "-c", "while true; do echo \"hello from an rkt container (pid $$) on node $NODE\"; sleep 5; done"]
    | .process.env += ["NODE=unknown"]
    | .hostname = "hello"' "$B/config.json" > "$B/config.json.new"
mv "$B/config.json.new" "$B/config.json"

say "network: bridge $NET.0/24 inside namespace $HUB"
ip netns add "$HUB"
ip -n "$HUB" link set lo up
ip -n "$HUB" link add br0 type bridge
ip -n "$HUB" addr add "$NET.1/24" dev br0
ip -n "$HUB" link set br0 up
if ! mountpoint -q /run/systemd/nspawn; then
    mkdir -p /run/systemd/nspawn
    mount -t tmpfs tmpfs /run/systemd/nspawn
    touch "$STATE/nspawn-tmpfs"
fi

CLUSTER=""
for i in $NODES; do CLUSTER="${CLUSTER:+$CLUSTER,}node$i=http://$NET.1$i:2380"; done
ENDPOINTS=""
for i in $NODES; do ENDPOINTS="${ENDPOINTS:+$ENDPOINTS,}$NET.1$i:2379"; done

for i in $NODES; do
    say "node$i: $NET.1$i"
    M="$STATE/m$i"
    mkdir -p "$M/up" "$M/work" "$M/merged" "$M/api"
    ip netns add "corelite-demo-m$i"
    ip -n "$HUB" link add "vdemo$i" type veth peer name eth0 netns "corelite-demo-m$i"
    ip -n "$HUB" link set "vdemo$i" master br0 up
    ip -n "corelite-demo-m$i" addr add "$NET.1$i/24" dev eth0
    ip -n "corelite-demo-m$i" link set eth0 up
    ip -n "corelite-demo-m$i" link set lo up
    mount -t overlay overlay -o "lowerdir=$ROOTFS,upperdir=$M/up,workdir=$M/work" "$M/merged"
    R="$M/merged"
    printf 'c0de%028d\n' "$i" > "$R/etc/machine-id"
    echo "node$i" > "$R/etc/hostname"
    for b in etcd-lite fleetd fleetctl rkt; do cp "$BIN/$b" "$R/usr/bin/$b"; done
    for u in etcd-lite.service fleetd.service; do
        cp "systemd-units/$u" "$R/etc/systemd/system/$u"
        ln -sf "/etc/systemd/system/$u" "$R/etc/systemd/system/multi-user.target.wants/$u"
    done
    mkdir -p "$R/etc/etcd-lite" "$R/etc/fleet" "$R/var/lib/corelite-demo"
    cat > "$R/etc/etcd-lite/etcd-lite.env" <<EOF
ETCD_NAME=node$i
ETCD_LISTEN_CLIENT_URLS=http://$NET.1$i:2379,http://127.0.0.1:2379
ETCD_ADVERTISE_CLIENT_URLS=http://$NET.1$i:2379
ETCD_LISTEN_PEER_URLS=http://$NET.1$i:2380
ETCD_INITIAL_ADVERTISE_PEER_URLS=http://$NET.1$i:2380
ETCD_INITIAL_CLUSTER=$CLUSTER
ETCD_INITIAL_CLUSTER_TOKEN=corelite-demo
ETCD_INITIAL_CLUSTER_STATE=new
EOF
    cat > "$R/etc/fleet/fleetd.env" <<EOF
FLEET_ETCD_SERVERS=http://127.0.0.1:2379
FLEET_PUBLIC_IP=$NET.1$i
FLEET_METADATA=node=$i
FLEET_LISTEN=/run/fleet-api/fleet.sock
FLEET_LISTEN_TCP=0.0.0.0:49153
EOF
    cp -a "$B" "$R/var/lib/corelite-demo/hello"
    jq --arg n "node$i" '.process.env = [.process.env[] | if startswith("NODE=") then "NODE=" + $n else . end]' \
        "$B/config.json" > "$R/var/lib/corelite-demo/hello/config.json"
    setsid systemd-nspawn -q -b -D "$R" -M "corelite-demo-m$i" --register=no --keep-unit \
        --network-namespace-path="/run/netns/corelite-demo-m$i" \
        --bind="$M/api:/run/fleet-api" </dev/null >"$M/console.log" 2>&1 &
    echo $! > "$M/nspawn.pid"
done

hub() { ip netns exec "$HUB" "$@"; }
FLEETCTL="$BIN/fleetctl --endpoint http://$NET.11:49153"

say "waiting for the etcd-lite cluster to elect a leader"
n=0
until hub env ETCDCTL_API=3 etcdctl --endpoints "$ENDPOINTS" endpoint status -w json 2>/dev/null \
        | jq -e '[.[] | select(.Status.leader != 0)] | length == 3' >/dev/null 2>&1; do
    n=$((n + 1)); [ $n -lt 300 ] || { echo "no etcd-lite leader after 60 s; see $STATE/m*/console.log" >&2; exit 1; }
    sleep 0.2
done
say "waiting for fleet to list 3 machines"
n=0
until [ "$(hub $FLEETCTL list-machines --no-legend 2>/dev/null | wc -l)" -eq 3 ]; do
    n=$((n + 1)); [ $n -lt 300 ] || { echo "fleet did not list 3 machines after 60 s" >&2; exit 1; }
    sleep 0.2
done
say "cluster ready in $(( $(date +%s) - START )) s"

cat > "$STATE/hello.service" <<'EOF'
[Unit]
Description=hello: a busybox container run by rkt, placed by fleet

[Service]
ExecStartPre=-/usr/bin/rkt delete --force hello
# rkt puts the container in a cgroup of its own (/rkt/hello), so journald would not file its
# output under this unit; the pipe through cat (which stays in the unit) does, until rkt nests
# containers under the unit that runs it.
ExecStart=/bin/sh -c '/usr/bin/rkt run --bundle /var/lib/corelite-demo/hello hello 2>&1 | cat'
ExecStopPost=-/usr/bin/rkt delete --force hello
EOF

cd "$STATE"
step "ip netns exec $HUB env ETCDCTL_API=3 etcdctl --endpoints $ENDPOINTS endpoint status -w table"
step "ip netns exec $HUB $FLEETCTL list-machines"
step "ip netns exec $HUB $FLEETCTL start --block-attempts 120 hello.service"
step "ip netns exec $HUB $FLEETCTL list-unit-files"
step "ip netns exec $HUB $FLEETCTL list-units"
sleep 6
step "ip netns exec $HUB $FLEETCTL journal -n 3 hello.service"
trap - EXIT INT TERM

cat <<EOF

The cluster keeps running. Reach it (as root) with:
  ip netns exec $HUB $BIN/fleetctl --endpoint http://$NET.11:49153 list-units
  ip netns exec $HUB env ETCDCTL_API=3 etcdctl --endpoints $ENDPOINTS member list -w table
  ip netns exec $HUB env ETCDCTL_API=3 etcdctl --endpoints $NET.12:2379 get --prefix --keys-only /_coreos.com/fleet/machine/
  ip netns exec $HUB curl -s http://$NET.13:2379/health
  curl --unix-socket $STATE/m1/api/fleet.sock http://localhost/fleet/v1/machines
Stop everything with: make demo-down
EOF
