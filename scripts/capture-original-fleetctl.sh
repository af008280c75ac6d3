#!/bin/bash
# Records the ORIGINAL fleetctl (v1.0.0, built by ../shared/tools/build-original-fleet.sh)
# driving corelite's fleetd (simulated systemd, single node on loopback) through every command,
# via scripts/fleet-capture.py: the exchanges become fleet-agent/tests/fixtures/
# original-fleetctl-v1.0.0.jsonl, which fleet-agent/tests/api.rs replays.
# Usage: capture-original-fleetctl.sh ORIGINAL_FLEETCTL OUT.jsonl   (after `make build`)
set -eu
OF=$(realpath "$1"); OUT=$(realpath -m "$2")
REPO=$(cd "$(dirname "$0")/.." && pwd)
T=$REPO/target/release
W=$(mktemp -d /tmp/cap-ours.XXXX)
rm -f "$OUT"
$T/etcd-lite --data-dir $W/etcd --listen-client-urls http://127.0.0.1:23791 --advertise-client-urls http://127.0.0.1:23791 \
  --listen-peer-urls http://127.0.0.1:23801 --initial-advertise-peer-urls http://127.0.0.1:23801 \
  --initial-cluster default=http://127.0.0.1:23801 > $W/etcd.log 2>&1 &
E=$!
sleep 2
printf '%032x\n' 1 > $W/machine-id
$T/fleetd --simulate-systemd --etcd-servers http://127.0.0.1:23791 --metadata role=web --agent-ttl 3s \
  --machine-id-file $W/machine-id --listen $W/fleet.sock --unit-dir $W/units --public-ip 10.9.0.1 > $W/fleetd.log 2>&1 &
F=$!
python3 $REPO/scripts/fleet-capture.py 49201 unix://$W/fleet.sock "$OUT" &
P=$!
trap 'kill $P $F $E 2>/dev/null; wait 2>/dev/null' EXIT
for i in $(seq 50); do [ -S $W/fleet.sock ] && break; sleep 0.2; done
sleep 3
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
fc() { echo "+ fleetctl $*"; "$OF" --endpoint http://127.0.0.1:49201 "$@" ; echo "exit=$?"; }
fc list-machines
fc list-machines -l
fc list-unit-files
fc list-units
fc submit hello.service web@.service
fc list-unit-files
fc list-unit-files --full --fields unit,hash
fc cat hello.service
fc load hello.service
fc list-unit-files
fc start hello.service
fc list-units
fc start web@1.service web@2.service
fc list-units --no-legend
fc list-units -l
fc stop hello.service
fc unload hello.service
sed -i 's/hello; sleep 1/hello again; sleep 1/' hello.service
fc submit hello.service
fc submit --replace hello.service
fc start --replace hello.service
fc list-unit-files --full
fc destroy hello.service web@1.service web@2.service web@.service
fc destroy nothing.service
fc stop nothing.service
fc list-unit-files
