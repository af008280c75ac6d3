#!/bin/sh
# Runs five etcd client libraries' own test suites against real etcd and against etcd-lite,
# one fresh single member each time, and prints the counts side by side.
#
#   scripts/etcd-client-suites.sh SRC [ETCD_LITE] [ETCD]
#
# SRC holds clones (or git worktrees) of the suites' repositories, named:
#   python-etcd    github.com/jplana/python-etcd     (v2; pytest)
#   python-etcd3   github.com/kragniz/python-etcd3   (pytest, PYTHON_ETCD_HTTP_URL)
#   aetcd          github.com/martyanov/aetcd        (pytest, TEST_ETCD_HTTP_URL)
#   etcd-client    github.com/etcdv3/etcd-client     (cargo test; expects localhost:2379)
#   node-etcd3     github.com/microsoft/etcd3        (mocha over TLS with its own test certs)
# The Python suites get their own venvs under SRC (pip needs the network once), node-etcd3
# `npm install` and `npx tsc`. Ports 2379/2380 (etcd-client and node-etcd3 hard-code them)
# and 32379/32380 on 127.0.0.1 must be free. CI cannot fetch the suites: what they found is
# covered by etcd-lite's own tests.
set -eu
SRC=$(cd "$1" && pwd)
LITE=${2:-$(pwd)/target/release/etcd-lite}
ETCD=${3:-/usr/bin/etcd}
RUN=$(mktemp -d)
trap 'rm -rf "$RUN"' EXIT

# start BIN PORT [tls]: one member on 127.0.0.1:PORT (peer PORT+1); prints its pid.
start() {
    d="$RUN/m$2-$$-$(date +%s%N)"
    mkdir -p "$d"
    scheme=http
    tls=""
    if [ "${3:-}" = tls ]; then
        scheme=https
        c="$SRC/node-etcd3/src/test/certs"
        tls="--cert-file $c/certs/etcd0.localhost.crt --key-file $c/private/etcd0.localhost.key"
    fi
    peer="http://127.0.0.1:$(($2 + 1))"
    # shellcheck disable=SC2086
    "$1" --name s1 --data-dir "$d/data" \
        --listen-client-urls "$scheme://127.0.0.1:$2" --advertise-client-urls "$scheme://127.0.0.1:$2" \
        --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" --initial-cluster "s1=$peer" \
        --enable-v2=true $tls >"$d/log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do
        if curl -sk "$scheme://127.0.0.1:$2/health" >/dev/null 2>&1; then
            echo "$pid"
            return
        fi
        sleep 0.1
    done
    echo "member on port $2 did not start" >&2
    kill "$pid"
    exit 1
}

# Per suite: the command, run in the suite's directory with the endpoint in the environment.
py_etcd() {
    # python-etcd starts its own members as `etcd` from PATH (Go-style flags).
    [ -x "$SRC/venv-py2/bin/pytest" ] || {
        python3 -m venv "$SRC/venv-py2"
        "$SRC/venv-py2/bin/pip" -q install urllib3 dnspython "pyOpenSSL==23.2.0" "cryptography<42" pytest mock
        "$SRC/venv-py2/bin/pip" -q install -e "$SRC/python-etcd"
    }
    mkdir -p "$RUN/bin"
    printf '#!/bin/sh\nexec %s "$@"\n' "$1" >"$RUN/bin/etcd"
    chmod +x "$RUN/bin/etcd"
    (cd "$SRC/python-etcd" && PATH="$RUN/bin:$PATH" "$SRC/venv-py2/bin/pytest" -q -p no:cacheprovider src/etcd/tests 2>&1 | tail -1)
}

py_etcd3() {
    [ -x "$SRC/venv-py3/bin/pytest" ] || {
        python3 -m venv "$SRC/venv-py3"
        "$SRC/venv-py3/bin/pip" -q install grpcio "protobuf<4" six tenacity hypothesis mock pytest
        "$SRC/venv-py3/bin/pip" -q install -e "$SRC/python-etcd3"
    }
    pid=$(start "$1" 32379)
    (cd "$SRC/python-etcd3" && PYTHON_ETCD_HTTP_URL=http://127.0.0.1:32379 "$SRC/venv-py3/bin/pytest" -q -p no:cacheprovider tests 2>&1 | tail -1) || true
    kill "$pid"
}

aetcd() {
    [ -x "$SRC/venv-aetcd/bin/pytest" ] || {
        python3 -m venv "$SRC/venv-aetcd"
        "$SRC/venv-aetcd/bin/pip" -q install "pytest==9.0.3" "pytest-asyncio==1.3.0" "pytest-mock==3.15.1" "pytest-cov==7.1.0"
        "$SRC/venv-aetcd/bin/pip" -q install -e "$SRC/aetcd"
    }
    pid=$(start "$1" 32379)
    (cd "$SRC/aetcd" && TEST_ETCD_HTTP_URL=http://127.0.0.1:32379 "$SRC/venv-aetcd/bin/pytest" -q -p no:cacheprovider tests 2>&1 | tail -1) || true
    kill "$pid"
}

rust_client() {
    pid=$(start "$1" 2379)
    (cd "$SRC/etcd-client" && cargo test -q -- --test-threads=1 2>&1 | grep 'test result' |
        awk '{p += $4; f += $6} END {print p " passed, " f " failed"}') || true
    kill "$pid"
}

node_etcd3() {
    [ -d "$SRC/node-etcd3/lib/test" ] || (cd "$SRC/node-etcd3" && npm install --no-audit --no-fund >/dev/null && npx tsc)
    pid=$(start "$1" 2379 tls)
    (cd "$SRC/node-etcd3" && npx mocha 2>&1 | grep -E 'passing|failing|pending' | tr -s ' ' | tr '\n' ' '; echo) || true
    kill "$pid"
}

for suite in py_etcd py_etcd3 aetcd rust_client node_etcd3; do
    for bin in "$ETCD" "$LITE"; do
        printf '%-12s %-40s ' "$suite" "$bin"
        "$suite" "$bin"
        sleep 1
    done
done
