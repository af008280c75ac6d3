#!/bin/sh
# `make demo` until the bootable image exists: start one etcd-lite member on loopback and show
# etcdctl and curl talking to it. Stops the member (by its PID) on exit.
set -eu
cd "$(dirname "$0")/.."

BIN=./target/release/etcd-lite
PORT=${DEMO_PORT:-2379}
EP=127.0.0.1:$PORT
DATA=$(mktemp -d /tmp/corelite-demo.XXXXXX)
export ETCDCTL_API=3

"$BIN" --name demo --data-dir "$DATA/demo.etcd" \
    --listen-client-urls "http://$EP" --advertise-client-urls "http://$EP" 2>"$DATA/etcd-lite.log" &
PID=$!
trap 'kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; rm -rf "$DATA"' EXIT INT TERM

i=0
until curl -sf "http://$EP/health" >/dev/null && kill -0 "$PID" 2>/dev/null; do
    if ! kill -0 "$PID" 2>/dev/null; then echo "etcd-lite exited; log:"; cat "$DATA/etcd-lite.log"; exit 1; fi
    i=$((i + 1))
    if [ "$i" -gt 100 ]; then echo "etcd-lite did not start; log:"; cat "$DATA/etcd-lite.log"; exit 1; fi
    sleep 0.1
done

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; sh -c "$*"; }

echo "etcd-lite is serving on $EP (data in $DATA)"
step "etcdctl --endpoints $EP put greeting 'hello from etcdctl'"
step "curl -s http://$EP/v2/keys/greeting; echo"
step "curl -s -XPUT http://$EP/v2/keys/config/color -d value=blue; echo"
step "etcdctl --endpoints $EP get config/ --prefix"
step "curl -s -XPOST http://$EP/v3/kv/range -d '{\"key\":\"Z3JlZXRpbmc=\"}'; echo"
step "etcdctl --endpoints $EP lease grant 60"
step "etcdctl --endpoints $EP endpoint status -w table"
step "curl -s http://$EP/health; echo"
echo
echo "Done. Try it yourself: $BIN, then etcdctl/curl against 127.0.0.1:2379."
