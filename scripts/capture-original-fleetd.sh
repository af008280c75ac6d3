#!/bin/bash
# Records corelite's fleetctl driving the ORIGINAL fleetd (v1.0.0, built by
# ../shared/tools/build-original-fleet.sh) through every command, via scripts/fleet-capture.py:
# the exchanges become fleet-agent/tests/fixtures/original-fleetd-v1.0.0.jsonl, which
# fleet-agent/tests/api.rs serves back to fleetctl. The original fleetd runs on real systemd in
# one systemd-nspawn machine (the fleet systemd tests' rootfs, target/test-cache/systemd-rootfs),
# in a network namespace of its own with etcd-lite (its v2 API) on that namespace's loopback.
# Root only. Usage: capture-original-fleetd.sh ORIGINAL_FLEETD OUT.jsonl   (after `make test`)
set -eu
ORIG=$(realpath "$1"); OUT=$(realpath -m "$2")
REPO=$(cd "$(dirname "$0")/.." && pwd)
T=$REPO/target/release
NS=ofl$$
W=/tmp/ofl.$$
mkdir -p $W
ip netns add $NS
ip -n $NS link set lo up
cleanup() {
  [ -n "${NSP:-}" ] && kill -TERM $NSP 2>/dev/null && sleep 3
  kill ${P:-} ${E:-} 2>/dev/null || true
  wait 2>/dev/null || true
  ip netns del $NS 2>/dev/null || true
}
trap 'cleanup; rm -rf $W' EXIT
mountpoint -q /run/systemd/nspawn || { mkdir -p /run/systemd/nspawn; mount -t tmpfs tmpfs /run/systemd/nspawn; }
cp -a $REPO/target/test-cache/systemd-rootfs $W/root
cp "$ORIG" $W/root/usr/bin/fleetd
printf '%032x\n' 2 > $W/root/etc/machine-id
cat > $W/root/etc/systemd/system/fleet.socket <<U
[Socket]
ListenStream=/var/run/fleet.sock
ListenStream=127.0.0.1:49153
[Install]
WantedBy=sockets.target
U
cat > $W/root/etc/systemd/system/fleet.service <<U
[Service]
ExecStart=/usr/bin/fleetd
Environment=FLEET_ETCD_SERVERS=http://127.0.0.1:2379
Environment=FLEET_PUBLIC_IP=10.9.0.2
Environment=FLEET_METADATA=role=web
[Install]
WantedBy=multi-user.target
U
mkdir -p $W/root/etc/systemd/system/sockets.target.wants $W/root/etc/systemd/system/multi-user.target.wants
ln -sf ../fleet.socket $W/root/etc/systemd/system/sockets.target.wants/fleet.socket
ln -sf ../fleet.service $W/root/etc/systemd/system/multi-user.target.wants/fleet.service
ip netns exec $NS $T/etcd-lite --data-dir $W/etcd --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 > $W/etcd.log 2>&1 &
E=$!
systemd-nspawn -q -b -D $W/root -M $NS --register=no --keep-unit --network-namespace-path=/run/netns/$NS < /dev/null > $W/nspawn.log 2>&1 &
NSP=$!
rm -f "$OUT"
ip netns exec $NS python3 $REPO/scripts/fleet-capture.py 49200 http://127.0.0.1:49153 "$OUT" &
P=$!
FC="ip netns exec $NS $T/fleetctl --endpoint http://127.0.0.1:49200"
for i in $(seq 60); do $FC list-machines 2>/dev/null | grep -q 10.9.0.2 && break; sleep 1; done
cd $W
cat > hello.service <<'U'
[Unit]
Description=Hello
[Service]
Environment=
ExecStart=/bin/sh -c "while true; do echo hello; sleep 1; done"
[X-Fleet]
MachineMetadata=role=web
U
cat > web@.service <<'U'
[Service]
ExecStart=/bin/sh -c "echo web %i; sleep 1000"
U
fc() { echo "+ fleetctl $*"; set +e; $FC "$@"; echo "exit=$?"; set -e; }
fc list-machines
fc list-unit-files
fc list-units
fc submit hello.service web@.service
fc list-unit-files
fc list-unit-files --full
fc cat hello.service
fc load hello.service
fc start hello.service
fc list-units
fc start web@1 web@2
fc list-units
fc status hello.service
fc journal -n 3 hello.service
fc stop hello.service
fc unload hello.service
sed -i 's/hello; sleep 1/hello again; sleep 1/' hello.service
fc submit hello.service
fc submit --replace hello.service
fc start --replace hello.service
fc list-unit-files --full
fc destroy hello.service web@1 web@2 web@.service
fc destroy nothing.service
fc list-unit-files
fc list-machines
