#!/bin/sh
# Builds a small busybox OCI image layout with umoci, for rkt's image tests and the demo:
#   OUT:latest  three layers: busybox and /etc; a web root and a file; that file deleted (a
#               whiteout) and another added. Entrypoint none, Cmd ["sh"], Env, WorkingDir /srv,
#               ExposedPorts 80/tcp.
#   With BIG_MB=N, a fourth layer adds /big.bin, N MiB of random bytes (for download tests).
# Usage: busybox-image.sh OUT_LAYOUT_DIR
set -eu
OUT=$1
BIG_MB=${BIG_MB:-0}
BUSYBOX=${BUSYBOX:-/bin/busybox}
command -v umoci >/dev/null || { echo "umoci is missing: run make deps" >&2; exit 1; }
[ -x "$BUSYBOX" ] || { echo "$BUSYBOX is missing: run make deps (busybox-static)" >&2; exit 1; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
rm -rf "$OUT"
umoci init --layout "$OUT"
umoci new --image "$OUT:latest"
umoci unpack --rootless --image "$OUT:latest" "$WORK/b" >/dev/null
R="$WORK/b/rootfs"
mkdir -p "$R/bin" "$R/etc" "$R/tmp" "$R/srv" "$R/root"
cp "$BUSYBOX" "$R/bin/busybox"
for app in sh ls cat echo sleep id env ps httpd wget hostname ip ifconfig mkdir rm true false printf grep head touch kill seq; do
    ln -sf busybox "$R/bin/$app"
done
printf 'root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/srv:/bin/false\n' >"$R/etc/passwd"
printf 'root:x:0:\nwww:x:33:\n' >"$R/etc/group"
umoci repack --image "$OUT:latest" "$WORK/b" >/dev/null
umoci unpack --rootless --image "$OUT:latest" "$WORK/c" >/dev/null
R="$WORK/c/rootfs"
mkdir -p "$R/srv"
echo "hello from an rkt pod" >"$R/srv/index.html"
echo "this file is deleted by the next layer" >"$R/srv/gone.txt"
umoci repack --image "$OUT:latest" "$WORK/c" >/dev/null
umoci unpack --rootless --image "$OUT:latest" "$WORK/d" >/dev/null
R="$WORK/d/rootfs"
rm "$R/srv/gone.txt"
echo "kept" >"$R/srv/kept.txt"
umoci repack --image "$OUT:latest" "$WORK/d" >/dev/null
if [ "$BIG_MB" -gt 0 ]; then
    umoci unpack --rootless --image "$OUT:latest" "$WORK/e" >/dev/null
    head -c "$((BIG_MB * 1024 * 1024))" /dev/urandom >"$WORK/e/rootfs/big.bin"
    umoci repack --image "$OUT:latest" "$WORK/e" >/dev/null
fi
umoci config --image "$OUT:latest" --config.cmd sh --config.env "GREETING=hello" \
    --config.workingdir /srv --config.exposedports 80/tcp --architecture amd64 --os linux >/dev/null
umoci gc --layout "$OUT"
