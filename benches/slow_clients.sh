#!/usr/bin/env bash
# Slow clients against cutover and nginx (issue #17): Debian's slowhttptest
# attacks a proxy in front of an application with 200 workers (thread per
# connection, benches/slow_clients/app.py), while a normal user
# (slow_clients/probe.py, 4 at a time, fresh connections, 5 s limit) measures
# the share of its requests answered and their latency.
#
# Attacks, CONNS connections each: -B slow request bodies (POST, 8 KiB
# announced, a few bytes every 10 s), -X slow reads of a 32 KiB answer
# (small receive window, 32 bytes read every 5 s), -H slow headers
# (slowloris). Each attack runs ATTACK seconds; the probe runs from
# RAMP seconds after the attack started until RAMP before its end.
#
# Usage: benches/slow_clients.sh [attack...]   attacks: B X H (default all)
# Settings (environment): CONNS=1000 ATTACK=40 RAMP=8 BASE_PORT=19000
#   CUTOVER=target/release/cutover PROXIES="cutover nginx" (also: cutover-unbuffered,
#   cutover with request_buffer = 0, response_buffer = 0 and no max_connections)
# Prints one line per (proxy, attack): answered share, p50, p99 of the
# normal user's requests, and the proxy's peak RSS.
set -euo pipefail

CONNS=${CONNS:-1000}
ATTACK=${ATTACK:-40}
RAMP=${RAMP:-8}
BASE_PORT=${BASE_PORT:-19000}
PROXIES=${PROXIES:-"cutover nginx"}
ATTACKS=${*:-"B X H"}

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
CUTOVER=${CUTOVER:-$ROOT/target/release/cutover}
APP=$((BASE_PORT + 1))
PORT=$((BASE_PORT + 80))
METRICS=$((BASE_PORT + 64))

missing=()
for tool in slowhttptest nginx python3; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "missing: ${missing[*]}; install with: apt-get install -y slowhttptest nginx python3" >&2
    exit 1
fi
if [[ ! -x $CUTOVER ]]; then
    echo "no cutover binary at $CUTOVER: build it with 'cargo build --release' (or set CUTOVER=)" >&2
    exit 1
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

WORK=$(mktemp -d /tmp/cutover-slow.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

render() { # template -> $WORK/<template>
    sed -e "s|@WORK@|$WORK|g" -e "s|@PORT@|$PORT|g" -e "s|@APP@|$APP|g" -e "s|@METRICS@|$METRICS|g" \
        "$HERE/slow_clients/$1" >"$WORK/$1"
}

wait_port() { # port
    for _ in $(seq 200); do
        (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listens on 127.0.0.1:$1" >&2
    return 1
}

peak_rss_mib() { # pid -> peak RSS of the process and its children, MiB
    local total=0 p
    for p in $1 $(pgrep -P "$1" || true); do
        [[ -r /proc/$p/status ]] || continue
        total=$((total + $(awk '$1 == "VmHWM:" { print $2 }' "/proc/$p/status")))
    done
    echo $((total / 1024))
}

attack_args() { # attack -> slowhttptest arguments
    local url=http://127.0.0.1:$PORT
    case $1 in
        B) echo "-B -c $CONNS -r 200 -i 10 -s 8192 -x 10 -t POST -u $url/upload" ;;
        X) echo "-X -c $CONNS -r 200 -w 512 -y 1024 -n 5 -z 32 -k 3 -u $url/big" ;;
        H) echo "-H -c $CONNS -r 200 -i 10 -x 24 -u $url/" ;;
    esac
}

printf '%-8s %-6s %9s %9s %8s %8s %9s\n' proxy attack requests answered% p50_ms p99_ms rss_MiB
for proxy in $PROXIES; do
    for attack in $ATTACKS; do
        python3 "$HERE/slow_clients/app.py" "$APP" 200 &
        app_pid=$!
        PIDS+=("$app_pid")
        wait_port "$APP"
        case $proxy in
            cutover)
                render cutover.toml
                rm -f "$WORK/state.json"
                CUTOVER_LOG=warn "$CUTOVER" run -c "$WORK/cutover.toml" >"$WORK/cutover.log" 2>&1 &
                ;;
            cutover-unbuffered) # the protections off: what issue #17 measured
                render cutover.toml
                sed -i -e 's|^workers = 1$|workers = 1\nrequest_buffer = 0\nresponse_buffer = 0|' \
                    -e '/^max_connections/d' "$WORK/cutover.toml"
                rm -f "$WORK/state.json"
                CUTOVER_LOG=warn "$CUTOVER" run -c "$WORK/cutover.toml" >"$WORK/cutover.log" 2>&1 &
                ;;
            nginx)
                render nginx.conf
                nginx -p "$WORK" -c "$WORK/nginx.conf" -e "$WORK/nginx.err" -g 'daemon off;' &
                ;;
        esac
        proxy_pid=$!
        PIDS+=("$proxy_pid")
        wait_port "$PORT"
        # shellcheck disable=SC2046
        slowhttptest $(attack_args "$attack") -l "$ATTACK" -p 3 >"$WORK/slowhttptest-$proxy-$attack.log" 2>&1 &
        attack_pid=$!
        PIDS+=("$attack_pid")
        sleep "$RAMP"
        read -r total answered share p50 p99 < <(python3 "$HERE/slow_clients/probe.py" "$PORT" $((ATTACK - 2 * RAMP)))
        rss=$(peak_rss_mib "$proxy_pid")
        printf '%-8s %-6s %9s %9s %8s %8s %9s\n' "$proxy" "-$attack" "$total" "$share" "$p50" "$p99" "$rss"
        wait "$attack_pid" 2>/dev/null || true
        kill "$proxy_pid" "$app_pid" 2>/dev/null || true
        wait "$proxy_pid" "$app_pid" 2>/dev/null || true
        sleep 1
    done
done
echo "logs in $WORK"
