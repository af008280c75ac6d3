#!/bin/bash
# Checks the ORIGINAL fleetctl's SSH paths (--tunnel, which runs `fleetctl fd-forward` on the
# node; ssh; status and journal, which it always runs over SSH) against corelite's fleetd
# (simulated systemd), with an sshd (openssh-server) in a network namespace of its own whose
# 127.0.0.1 is the "machine". Root only; links target/release/fleetctl as
# /usr/local/bin/fleetctl while it runs (what the SSH session finds) and removes it after.
# Usage: check-original-fleetctl-ssh.sh ORIGINAL_FLEETCTL   (after `make build`)
set -u
OF=$(realpath "$1")
REPO=$(cd "$(dirname "$0")/.." && pwd); T=$REPO/target/release
NS=osh$$; W=/tmp/osh.$$; mkdir -p $W
ip netns add $NS; ip -n $NS link set lo up
cleanup() { kill $S $F $E ${AG:-} 2>/dev/null; wait 2>/dev/null; ip netns del $NS; rm -rf $W; rm -f /var/run/fleet.sock /usr/local/bin/fleetctl; }
trap cleanup EXIT
ssh-keygen -q -t ed25519 -N '' -f $W/hostkey
ssh-keygen -q -t ed25519 -N '' -f $W/userkey
cp $W/userkey.pub $W/authorized_keys
cat > $W/sshd_config <<C
ListenAddress 127.0.0.1:22
HostKey $W/hostkey
AuthorizedKeysFile $W/authorized_keys
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
PidFile $W/sshd.pid
AllowStreamLocalForwarding yes
C
mkdir -p /run/sshd
ip netns exec $NS /usr/sbin/sshd -D -f $W/sshd_config -E $W/sshd.log &
S=$!
ip netns exec $NS $T/etcd-lite --data-dir $W/etcd --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 > $W/etcd.log 2>&1 &
E=$!
sleep 2
printf '%032x\n' 3 > $W/machine-id
ip netns exec $NS $T/fleetd --simulate-systemd --etcd-servers http://127.0.0.1:2379 --metadata role=web \
  --machine-id-file $W/machine-id --listen /var/run/fleet.sock --unit-dir $W/units --public-ip 127.0.0.1 > $W/fleetd.log 2>&1 &
F=$!
eval $(ssh-agent -s) > /dev/null; AG=$SSH_AGENT_PID
ssh-add -q $W/userkey
sleep 3
cd $W; ln -sf $T/fleetctl /usr/local/bin/fleetctl
printf '[Service]\nExecStart=/bin/sh -c "echo hi; sleep 100"\n' > hello.service
OFC="ip netns exec $NS $OF --tunnel 127.0.0.1 --ssh-username root --strict-host-key-checking=false --request-timeout 10"
for cmd in "list-machines" "start hello.service" "list-units" "status hello.service" "journal --lines=2 hello.service" "ssh hello.service echo via-fleetctl-ssh" "ssh 00000000 uname" "destroy hello.service"; do
  echo "+ original fleetctl --tunnel 127.0.0.1 $cmd"
  timeout 60 $OFC $cmd 2>&1 | head -8
  echo "exit=${PIPESTATUS[0]}"
done
kill $AG
