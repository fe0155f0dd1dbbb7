#!/usr/bin/env bash
# Instructions per proxied request, and where they go, with callgrind: a
# measure that other work on a shared machine does not disturb.
#
# Runs the same topology as compare.sh (nginx stand-in backends, 5% canary,
# returning users with a sticky cookie, 16 keep-alive connections) with
# cutover under valgrind; counts only the measured requests (counters are
# zeroed after a warm-up) and prints instructions per request and the top
# functions (inclusive).
#
# Usage: benches/profile.sh [requests]   (default 20000)
# Settings: CUTOVER=target/release/cutover BASE_PORT=18000 TOP=40
#   LOG=off|file|stdout   the access log (default off; stdout goes to a file)
#   PROTO=h1|h2           HTTP/1.1 in the clear (default), or HTTP/2 over TLS
#                         (ALPN) with 10 streams per connection, as compare.sh's
#                         h2 section
set -euo pipefail

REQUESTS=${1:-20000}
TOP=${TOP:-40}
LOG=${LOG:-off}
PROTO=${PROTO:-h1}
BASE_PORT=${BASE_PORT:-18000}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
CUTOVER=${CUTOVER:-$ROOT/target/release/cutover}
for tool in valgrind callgrind_control callgrind_annotate nginx h2load openssl; do
    command -v "$tool" >/dev/null || {
        echo "missing: $tool (apt-get install -y valgrind nginx nghttp2-client openssl)" >&2
        exit 1
    }
done
[[ -x $CUTOVER ]] || { echo "no cutover binary at $CUTOVER: cargo build --release" >&2; exit 1; }

WORK=$(mktemp -d /tmp/cutover-profile.XXXXXX)
chmod 755 "$WORK"
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT
render() {
    sed -e "s|@WORK@|$WORK|g" -e "s|@PORT@|$((BASE_PORT + 80))|g" -e "s|@TLSPORT@|$((BASE_PORT + 443))|g" \
        -e "s|@STABLE@|$((BASE_PORT + 81))|g" -e "s|@CANARY@|$((BASE_PORT + 82))|g" "$HERE/compare/$1" >"$WORK/$1"
}
wait_port() {
    for _ in $(seq 600); do
        (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
render backends.conf
render cutover.toml
sed -i 's/^workers = 1/workers = 1\ndrain_timeout = "1s"/' "$WORK/cutover.toml"
OUT_FILE=$WORK/cutover.out
case $LOG in
    file) sed -i "s|^access = \"off\"|access = \"json\"\naccess_path = \"$WORK/access.log\"|" "$WORK/cutover.toml" ;;
    stdout) sed -i 's|^access = "off"|access = "json"|' "$WORK/cutover.toml" && OUT_FILE=$WORK/access.log ;;
esac
nginx -p "$WORK" -c "$WORK/backends.conf" -e "$WORK/backends.err" -g 'daemon off;' &
PIDS+=("$!")
CUTOVER_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out" \
    "$CUTOVER" run -c "$WORK/cutover.toml" >"$OUT_FILE" 2>"$WORK/cutover.log" &
VG=$!
PIDS+=("$VG")
wait_port $((BASE_PORT + 80))
case $PROTO in
    h1) CLIENT=(--h1 -c16) URL=http://127.0.0.1:$((BASE_PORT + 80))/products/42 ;;
    h2) CLIENT=(-c16 -m10) URL=https://127.0.0.1:$((BASE_PORT + 443))/products/42 ;;
    *) echo "PROTO: h1 or h2" >&2; exit 1 ;;
esac
load() {
    h2load "${CLIENT[@]}" -t1 -n "$1" -H "cookie: theme=dark; cutover_id=user-42; consent=yes" \
        -H "user-agent: Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0" \
        -H "accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8" \
        "$URL"
}
load 2000 >/dev/null
# A command reaches a process blocked in a system call only when it wakes
# (its workers' one-second timer): wait for that before and after the load.
callgrind_control -z "$VG" >/dev/null
sleep 2
load "$REQUESTS" | grep -E '^(requests|status codes):'
callgrind_control -d "$VG" >/dev/null
sleep 2
kill "$VG"
wait "$VG" 2>/dev/null || true
# The dump after zeroing is the part file with the highest number.
OUT=$(ls -1 "$WORK"/callgrind.out.* 2>/dev/null | sort -t. -k3 -n | tail -1)
TOTAL=$(callgrind_annotate "$OUT" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
echo "instructions per request: $((TOTAL / REQUESTS)) ($TOTAL over $REQUESTS requests)"
if ((TOTAL / REQUESTS < 1000)); then
    echo "the dump missed the load (a command handled late): run again" >&2
    exit 1
fi
callgrind_annotate --inclusive=yes "$OUT" 2>/dev/null | sed -n '/Ir/,$p' | head -$((TOP + 3)) | cut -c1-200
echo "callgrind output: $OUT"
