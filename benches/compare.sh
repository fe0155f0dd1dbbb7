#!/usr/bin/env bash
# Side-by-side load comparison of cutover, nginx and HAProxy as a canary
# proxy, one core each.
#
# Topology (all on 127.0.0.1): wrk/h2load -> proxy -> two stand-in app
# servers (one nginx with a "stable" and a "canary" server block). Every
# proxy: one worker, pinned to PROXY_CPU with taskset; 5% of users to the
# canary by the sticky cookie `cutover_id`; keep-alive to the backends; no
# access log, except in the log sections. The load generator and the
# backends share LOAD_CPU. Proxies run in interleaved rounds (the order
# rotates each round), each started fresh, warmed up, then measured; the
# summary shows medians over rounds, with the proxy's own CPU time (user +
# sys) per request.
#
# Usage: benches/compare.sh [section...]    sections: http tls h2 idle reload
#                                           http-log tls-log h2-log http-stdout
#                                           http-fleet
#                                           (default: all but the log and fleet ones)
#   http-log:    as http, every proxy writes a JSON line per request to a
#                file (nginx: buffer=64k flush=1s; HAProxy: log to stdout,
#                redirected to the file); lines lost are counted.
#   tls-log, h2-log: as tls and h2, with the log of http-log.
#   http-stdout: as http, cutover with its default access log (JSON to
#                standard output, here redirected to a file); nginx and
#                HAProxy without a log, as in the http section.
#   http-fleet:  as http, cutover alone, against cutover with a [fleet]
#                section (lease 5s, a fresh prefix each run) on a local etcd
#                that the script starts on LOAD_CPU; both with a one-step
#                rollout at 5% running (so the fleet replica drives it and
#                publishes its window counters); the ratios are to plain
#                cutover. Needs `etcd`.
# Settings (environment): ROUNDS=3 DURATION=10 WARMUP=2 CONNS=64 H2_CONNS=16
#   H2_STREAMS=10 IDLE_CONNS=10000 RELOADS=5 PROXY_CPU=0 LOAD_CPU=1
#   BASE_PORT=18000 CUTOVER=target/release/cutover PROXIES="cutover nginx haproxy"
#   (add cutover-base to PROXIES with CUTOVER_BASE=<another build> to set two
#   builds side by side in the same rounds; add relay for the floor of the
#   http sections: HAProxy relaying bytes in mode tcp, no HTTP work, a
#   measure of the kernel's share of any proxy's CPU per request; and
#   relay-tokio for the same in Rust, benches/relay.rs, built here with
#   cargo; RELAY_WORK=n and RELAY_TOUCH=bytes give it work per request)
#   (http-fleet also uses BASE_PORT+110 and +111 for etcd)
# Nothing is installed: missing tools are named with the command to install them.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-64}
H2_CONNS=${H2_CONNS:-16}
H2_STREAMS=${H2_STREAMS:-10}
IDLE_CONNS=${IDLE_CONNS:-10000}
RELOADS=${RELOADS:-5}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
LOGGING=off # file or stdout in the log sections
BASE_PORT=${BASE_PORT:-18000}
PROXIES=${PROXIES:-"cutover nginx haproxy"}
SECTIONS=${*:-"http tls h2 idle reload"}

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
CUTOVER=${CUTOVER:-$ROOT/target/release/cutover}
STABLE=$((BASE_PORT + 81))
CANARY=$((BASE_PORT + 82))

missing=()
for tool in nginx haproxy wrk h2load taskset python3 openssl curl; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
[[ " $SECTIONS " == *" http-fleet "* ]] && ! command -v etcd >/dev/null && missing+=(etcd)
if ((${#missing[@]})); then
    echo "missing: ${missing[*]}" >&2
    echo "install with: apt-get install -y nginx haproxy wrk nghttp2-client util-linux python3 openssl curl etcd-server" >&2
    exit 1
fi
if [[ ! -x $CUTOVER ]]; then
    echo "no cutover binary at $CUTOVER: build it with 'cargo build --release' (or set CUTOVER=)" >&2
    exit 1
fi
RELAY_TOKIO=
if [[ " $PROXIES " == *" relay-tokio "* ]]; then
    RELAY_TOKIO=$(cd "$ROOT" && cargo build --release --bench relay --message-format=json 2>/dev/null |
        python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "relay" and m.get("executable"):
        print(m["executable"])')
    [[ -x $RELAY_TOKIO ]] || { echo "could not build benches/relay.rs: cargo build --release --bench relay" >&2; exit 1; }
fi
# The idle client and each proxy need a descriptor per idle connection.
if (($(ulimit -n) < IDLE_CONNS + 100)); then
    ulimit -n $((IDLE_CONNS + 100)) 2>/dev/null || {
        echo "the idle section needs 'ulimit -n' >= $((IDLE_CONNS + 100)); lowering IDLE_CONNS" >&2
        IDLE_CONNS=$(($(ulimit -n) - 100))
    }
fi

WORK=$(mktemp -d /tmp/cutover-compare.XXXXXX)
chmod 755 "$WORK"
RESULTS=$WORK/results.tsv
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

port_of() { # proxy -> plain port
    case $1 in cutover | cutover-fleet | cutover-base) echo $((BASE_PORT + 80)) ;; nginx) echo $((BASE_PORT + 90)) ;; haproxy) echo $((BASE_PORT + 100)) ;; relay) echo $((BASE_PORT + 70)) ;; relay-tokio) echo $((BASE_PORT + 60)) ;; esac
}
tls_port_of() { echo $(($(port_of "$1") + 363)); }

render() { # template proxy -> $WORK/<template>
    local port tls
    port=$(port_of "${2:-cutover}")
    tls=$(tls_port_of "${2:-cutover}")
    sed -e "s|@WORK@|$WORK|g" -e "s|@PORT@|$port|g" -e "s|@TLSPORT@|$tls|g" \
        -e "s|@STABLE@|$STABLE|g" -e "s|@CANARY@|$CANARY|g" \
        -e "s|@MAXCONN@|$((($(ulimit -n) - 200) / 2))|g" "$HERE/compare/$1" >"$WORK/$1"
}

wait_port() { # port
    for _ in $(seq 200); do
        (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listens on 127.0.0.1:$1" >&2
    return 1
}

tree() { # pid -> pid and its children
    echo "$1"
    pgrep -P "$1" || true
}

cpu_ticks() { # pid -> "utime stime" of the process tree, in clock ticks
    local user=0 sys=0 p u s
    for p in $(tree "$1"); do
        [[ -r /proc/$p/stat ]] || continue
        read -r u s < <(awk '{ print $14, $15 }' "/proc/$p/stat")
        user=$((user + u))
        sys=$((sys + s))
    done
    echo "$user $sys"
}

mem_kb() { # pid field(VmHWM|VmRSS) -> sum over the process tree, KiB
    local total=0 p
    for p in $(tree "$1"); do
        [[ -r /proc/$p/status ]] || continue
        total=$((total + $(awk -v f="$2:" '$1 == f { print $2 }' "/proc/$p/status")))
    done
    echo "$total"
}

PROXY_PID=
start_proxy() { # proxy
    case $1 in
        cutover | cutover-fleet | cutover-base)
            render cutover.toml
            rm -f "$WORK/state.json"
            [[ $1 == cutover-fleet ]] && printf '\n[fleet]\netcd = ["http://127.0.0.1:%s"]\nprefix = "/cutover/bench-%s"\nname = "bench"\nlease = "5s"\n' \
                "$ETCD_PORT" "$(date +%s%N)" >>"$WORK/cutover.toml"
            local out=$WORK/cutover.out
            case $LOGGING in
                file) sed -i "s|^access = \"off\"|access = \"json\"\naccess_path = \"$WORK/access-$1.log\"|" "$WORK/cutover.toml" ;;
                stdout) sed -i 's|^access = "off"|access = "json"|' "$WORK/cutover.toml" && out=$WORK/access-$1.log ;;
            esac
            local bin=$CUTOVER
            [[ $1 == cutover-base ]] && bin=$CUTOVER_BASE
            CUTOVER_LOG=warn taskset -c "$PROXY_CPU" "$bin" run -c "$WORK/cutover.toml" >"$out" 2>"$WORK/cutover.log" &
            ;;
        nginx)
            render nginx.conf nginx
            if [[ $LOGGING == file ]]; then
                # The same fields as cutover's line, written as nginx does on a busy site.
                sed -i "s|^    access_log off;|    log_format json escape=json '{\"time\":\"\$time_iso8601\",\"client\":\"\$remote_addr\",\"method\":\"\$request_method\",\"path\":\"\$uri\",\"status\":\$status,\"route\":\"web\",\"version\":\"\$version\",\"backend\":\"\$upstream_addr\",\"duration_ms\":\$request_time,\"bytes_in\":\$request_length,\"bytes_out\":\$body_bytes_sent}';\n    access_log $WORK/access-nginx.log json buffer=64k flush=1s;|" "$WORK/nginx.conf"
            fi
            taskset -c "$PROXY_CPU" nginx -p "$WORK" -c "$WORK/nginx.conf" -e "$WORK/nginx.err" -g 'daemon off;' &
            ;;
        haproxy)
            render haproxy.cfg haproxy
            local out=$WORK/haproxy.log
            if [[ $LOGGING == file ]]; then
                # HAProxy writes its log lines to stdout (no syslog), one write each.
                sed -i -e 's|^    nbthread 1|    nbthread 1\n    log stdout format raw local0|' \
                    -e "s|^    option forwardfor|    option forwardfor\n    log global\n    log-format '{\"time\":\"%tr\",\"client\":\"%ci\",\"method\":\"%HM\",\"path\":\"%HPO\",\"status\":%ST,\"route\":\"web\",\"version\":\"%b\",\"backend\":\"%si:%sp\",\"duration_ms\":%Ta,\"bytes_in\":%U,\"bytes_out\":%B}'|" \
                    "$WORK/haproxy.cfg"
                out=$WORK/access-haproxy.log
            fi
            taskset -c "$PROXY_CPU" haproxy -db -f "$WORK/haproxy.cfg" >"$out" 2>"$WORK/haproxy.err" &
            ;;
        relay-tokio)
            taskset -c "$PROXY_CPU" "$RELAY_TOKIO" "127.0.0.1:$(port_of relay-tokio)" "127.0.0.1:$STABLE" &
            ;;
        relay)
            render relay.cfg relay
            taskset -c "$PROXY_CPU" haproxy -db -f "$WORK/relay.cfg" >"$WORK/relay.out" 2>"$WORK/relay.err" &
            ;;
    esac
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    wait_port "$(port_of "$1")"
    [[ $1 == relay* ]] || wait_port "$(tls_port_of "$1")"
    [[ $1 == cutover-fleet ]] && wait_fleet
    return 0
}

ETCD_PORT=$((BASE_PORT + 110))
start_etcd() { # a one-member etcd for the http-fleet section, on LOAD_CPU
    taskset -c "$LOAD_CPU" etcd --name bench --data-dir "$WORK/etcd" \
        --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
        --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
        --initial-cluster "bench=http://127.0.0.1:$((ETCD_PORT + 1))" >"$WORK/etcd.log" 2>&1 &
    PIDS+=("$!")
    wait_port "$ETCD_PORT"
}

start_rollout() { # proxy: a one-step rollout at the configured 5% for an hour
    local answer
    answer=$(curl -s -w ' %{http_code}' --unix-socket "$WORK/admin.sock" -X POST -H 'content-type: application/json' \
        -d '{"steps": [5], "interval": "1h"}' http://cutover/v1/routes/web/rollout)
    [[ $answer == *" 200" ]] || { echo "the rollout was refused: $answer" >&2; return 1; }
    [[ $1 == cutover ]] && return 0
    for _ in $(seq 200); do # until this replica drives it
        curl -s --unix-socket "$WORK/admin.sock" http://cutover/v1/fleet | grep -Eq '"web": ?"bench"' && return 0
        sleep 0.05
    done
    echo "no driver: $(curl -s --unix-socket "$WORK/admin.sock" http://cutover/v1/fleet)" >&2
    return 1
}

wait_fleet() { # until the proxy is connected to etcd (measured in fleet mode, not beside it)
    for _ in $(seq 200); do
        curl -s --unix-socket "$WORK/admin.sock" http://cutover/v1/fleet | grep -Eq '"connected": ?true' && return 0
        sleep 0.05
    done
    echo "cutover did not connect to etcd: $(curl -s --unix-socket "$WORK/admin.sock" http://cutover/v1/fleet)" >&2
    return 1
}

stop_proxy() {
    kill "$PROXY_PID" 2>/dev/null || true
    wait "$PROXY_PID" 2>/dev/null || true
    PROXY_PID=
    sleep 0.3
}

ms() { # wrk duration (e.g. 812.00us, 1.20ms, 1.01s) -> milliseconds
    awk -v d="$1" 'BEGIN {
        if (d ~ /us$/) printf "%.3f", d / 1000; else if (d ~ /ms$/) printf "%.3f", d + 0;
        else if (d ~ /s$/) printf "%.3f", d * 1000; else printf "%.3f", d }'
}

# One measured run: warm-up, then DURATION seconds; appends a result line:
# section proxy round req/s p50_ms p99_ms errors peak_rss_kib cpu_seconds
measure() { # section proxy round
    local section=$1 proxy=$2 round=$3 url out before after hz rps p50 p99 errors
    local port
    hz=$(getconf CLK_TCK)
    out=$WORK/$section-$proxy-$round.out
    case $section in
        http*) port=$(port_of "$proxy"); url=http://127.0.0.1:$port/ ;;
        *) port=$(tls_port_of "$proxy"); url=https://127.0.0.1:$port/ ;;
    esac
    if [[ $section == h2* ]]; then
        local h2=(taskset -c "$LOAD_CPU" h2load -t1 -c "$H2_CONNS" -m "$H2_STREAMS"
            -H "cookie: theme=dark; cutover_id=user-42; consent=yes"
            -H "user-agent: Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0"
            -H "accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")
        "${h2[@]}" -D "$WARMUP" "${url}products/42" >"$out.warmup" 2>&1 || true
        before=$(cpu_ticks "$PROXY_PID")
        "${h2[@]}" -D "$DURATION" "${url}products/42" >"$out" 2>&1 || true
        after=$(cpu_ticks "$PROXY_PID")
        rps=$(awk '/^finished in/ { gsub(",", "", $4); print $4 }' "$out")
        # h2load reports no percentiles: mean and max time per request.
        p50=$(ms "$(awk '/^time for request:/ { print $6 }' "$out")")
        p99=$(ms "$(awk '/^time for request:/ { print $5 }' "$out")")
        errors=$(awk '/^requests:/ { print $10 + $12 + $14 }' "$out")
        local non2xx
        non2xx=$(awk '/^status codes:/ { print $5 + $7 + $9 }' "$out")
        errors=$((${errors:-0} + ${non2xx:-0}))
    else
        local w=(taskset -c "$LOAD_CPU" wrk -t1 -c "$CONNS" --latency -s "$HERE/compare/users.lua")
        "${w[@]}" -d "${WARMUP}s" "$url" >"$out.warmup" 2>&1 || true
        before=$(cpu_ticks "$PROXY_PID")
        "${w[@]}" -d "${DURATION}s" "$url" >"$out" 2>&1 || true
        after=$(cpu_ticks "$PROXY_PID")
        rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
        p50=$(ms "$(awk '$1 == "50%" { print $2 }' "$out")")
        p99=$(ms "$(awk '$1 == "99%" { print $2 }' "$out")")
        errors=$(awk '/Non-2xx/ { n += $NF } /Socket errors/ { gsub(",", ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }' "$out")
    fi
    local cpu user sys u0 s0 u1 s1
    read -r u0 s0 <<<"$before"
    read -r u1 s1 <<<"$after"
    seconds() { awk -v t="$1" -v hz="$hz" 'BEGIN { printf "%.2f", t / hz }'; }
    cpu=$(seconds $((u1 - u0 + s1 - s0)))
    user=$(seconds $((u1 - u0)))
    sys=$(seconds $((s1 - s0)))
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s' "$section" "$proxy" "$round" "${rps:-0}" "$p50" \
        "$p99" "${errors:-0}" "$(mem_kb "$PROXY_PID" VmHWM)" "$cpu" "$user" "$sys" >>"$RESULTS"
    printf '  %-8s round %s: %10s req/s  p50 %7s ms  p99 %7s ms  errors %s  proxy CPU %ss (user %s, sys %s)  load %s\n' \
        "$proxy" "$round" "${rps:-0}" "$p50" "$p99" "${errors:-0}" "$cpu" "$user" "$sys" "$(cut -d' ' -f1-3 /proc/loadavg)"
}

summary() { # section
    python3 - "$RESULTS" "$1" "$DURATION" <<'EOF'
import statistics, sys
path, section, duration = sys.argv[1], sys.argv[2], float(sys.argv[3])
rows = [l.rstrip("\n").split("\t") for l in open(path) if l.startswith(section + "\t")]
by = {}
for r in rows:
    by.setdefault(r[1], []).append(r)
med = lambda rs, i: statistics.median(float(r[i]) for r in rs)
# The baseline the ratios are to: nginx, or plain cutover in the fleet section.
base_name = "cutover" if section == "http-fleet" else "nginx"
base = med(by[base_name], 3) if base_name in by else None
latency = ("mean ms", "max ms") if section.startswith("h2") else ("p50 ms", "p99 ms")
logged = section.endswith("-log") or section == "http-stdout"
print(f"| {section} | req/s | {latency[0]} | {latency[1]} | errors | peak RSS MiB | req per proxy CPU-s "
      "| CPU µs/req | user µs/req | sys µs/req "
      f"| req/s vs {base_name} | {latency[1].split()[0]} vs {base_name} | CPU/req vs {base_name} |"
      + (" log lines lost |" if logged else ""))
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if logged else ""))
def per_request(rs, i):
    # The proxy's CPU seconds of kind i per request, in microseconds.
    values = [float(r[i]) * 1e6 / (float(r[3]) * duration) for r in rs if float(r[3]) > 0]
    return f"{statistics.median(values):.1f}" if values else "-"
def cpu_per_request(rs):
    values = [float(r[8]) * 1e6 / (float(r[3]) * duration) for r in rs if float(r[3]) > 0]
    return statistics.median(values) if values else None
base_cpu = cpu_per_request(by[base_name]) if base_name in by else None
base_p99 = med(by[base_name], 5) if base_name in by else None
for proxy, rs in by.items():
    rps = med(rs, 3)
    cpu = [float(r[3]) * duration / float(r[8]) for r in rs if float(r[8]) > 0]
    per_cpu = f"{statistics.median(cpu):,.0f}" if cpu else "-"
    ratio = f"{rps / base:.2f}x" if base else "-"
    p99_ratio = f"{med(rs, 5) / base_p99:.2f}x" if base_p99 else "-"
    cpu_req = cpu_per_request(rs)
    cpu_text = f"{cpu_req:.1f}" if cpu_req is not None else "-"
    cpu_ratio = f"{cpu_req / base_cpu:.2f}x" if cpu_req is not None and base_cpu else "-"
    lost = [r[11] for r in rs if len(r) > 11 and r[11] != "-"]
    lost_text = f" {sum(int(x) for x in lost)} |" if lost else " - |"
    print(f"| {proxy} | {rps:,.0f} | {med(rs, 4):.2f} | {med(rs, 5):.2f} | {sum(int(r[6]) for r in rs)} "
          f"| {max(float(r[7]) for r in rs) / 1024:.1f} | {per_cpu} | {cpu_text} | {per_request(rs, 9)} "
          f"| {per_request(rs, 10)} | {ratio} | {p99_ratio} | {cpu_ratio} |" + (lost_text if logged else ""))
EOF
}

load_section() { # section
    echo "== $1: ${ROUNDS} interleaved rounds of ${DURATION}s (after ${WARMUP}s warm-up) =="
    local round proxies p
    read -ra proxies <<<"$PROXIES"
    [[ $1 == http-fleet ]] && proxies=(cutover cutover-fleet)
    # The relays forward plain HTTP/1.1 only, and write no log.
    if [[ $1 != http && $1 != http-stdout ]]; then
        local kept=()
        for p in "${proxies[@]}"; do [[ $p == relay* ]] || kept+=("$p"); done
        proxies=("${kept[@]}")
    fi
    case $1 in *-log) LOGGING=file ;; http-stdout) LOGGING=stdout ;; *) LOGGING=off ;; esac
    for round in $(seq "$ROUNDS"); do
        for i in "${!proxies[@]}"; do
            p=${proxies[$(((i + round - 1) % ${#proxies[@]}))]}
            rm -f "$WORK/access-$p.log"
            start_proxy "$p"
            [[ $1 == http-fleet ]] && start_rollout "$p"
            measure "$1" "$p" "$round"
            stop_proxy
            log_lines "$1" "$p" "$round"
        done
    done
    LOGGING=off
    summary "$1"
}

# Ends the result line: the access log lines lost (requests wrk counted,
# warm-up included, minus the file's lines of 200 answers after the proxy
# stopped), or - without a log.
log_lines() { # section proxy round
    local log=$WORK/access-$2.log out=$WORK/$1-$2-$3.out requests lines lost=-
    if [[ -f $log ]]; then
        # wrk: "N requests in"; h2load: "requests: T total, S started, D done".
        requests=$(cat "$out.warmup" "$out" 2>/dev/null | awk '/requests in/ { n += $1 } /^requests:/ { n += $6 } END { print n + 0 }')
        # The readiness probes' 400s and HAProxy's TLS notices are not requests.
        lines=$(grep -c '"status":200' "$log" || true)
        lost=$((requests > lines ? requests - lines : 0))
        echo "  $2: $lines log lines for $requests requests, $lost lost"
    fi
    printf '\t%s\n' "$lost" >>"$RESULTS"
}

idle_section() {
    echo "== idle: memory with ${IDLE_CONNS} idle keep-alive client connections =="
    echo "| proxy | RSS before MiB | RSS with ${IDLE_CONNS} idle MiB | KiB per connection |"
    echo "|---|---:|---:|---:|"
    local p before after client
    for p in $PROXIES; do
        start_proxy "$p"
        curl -s -o /dev/null -H 'Cookie: cutover_id=user-42' "http://127.0.0.1:$(port_of "$p")/" || true
        before=$(mem_kb "$PROXY_PID" VmRSS)
        taskset -c "$LOAD_CPU" python3 "$HERE/compare/idle.py" 127.0.0.1 "$(port_of "$p")" "$IDLE_CONNS" >"$WORK/idle-$p.out" 2>&1 &
        client=$!
        for _ in $(seq 1200); do
            grep -q '^open' "$WORK/idle-$p.out" 2>/dev/null && break
            kill -0 "$client" 2>/dev/null || break
            sleep 0.1
        done
        sleep 1
        after=$(mem_kb "$PROXY_PID" VmRSS)
        awk -v p="$p" -v b="$before" -v a="$after" -v n="$IDLE_CONNS" -v st="$(head -1 "$WORK/idle-$p.out")" \
            'BEGIN { printf "| %s | %.1f | %.1f | %.1f |  (%s)\n", p, b / 1024, a / 1024, (a - b) / n, st }'
        kill "$client" 2>/dev/null || true
        wait "$client" 2>/dev/null || true
        stop_proxy
    done
}

reload_section() {
    echo "== reload: a 1000-route config, ${RELOADS} reloads under load (4 connections) =="
    local config=$WORK/cutover-1000.toml i
    render cutover.toml
    {
        sed '/^\[\[routes\]\]/,$d' "$WORK/cutover.toml"
        for i in $(seq 1000); do
            printf '[[routes]]\nname = "r%d"\nhost = "r%d.example.com"\nstable = "stable"\ncanary = "canary"\nweight = 5\n\n' "$i" "$i"
        done
        sed -n '/^\[\[routes\]\]/,$p' "$WORK/cutover.toml"
    } >"$config"
    CUTOVER_LOG=warn taskset -c "$PROXY_CPU" "$CUTOVER" run -c "$config" >"$WORK/cutover-reload.log" 2>&1 &
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    wait_port "$(port_of cutover)"
    local url=http://127.0.0.1:$(port_of cutover)/ length=$((RELOADS * 2 + 4))
    local w=(taskset -c "$LOAD_CPU" wrk -t1 -c4 --latency -s "$HERE/compare/users.lua" -d "${length}s" "$url")
    "${w[@]}" >"$WORK/reload-baseline.out" 2>&1
    "${w[@]}" >"$WORK/reload-under.out" 2>&1 &
    local client=$!
    # One more client, the stall probe, which also does the reloads.
    taskset -c "$LOAD_CPU" python3 "$HERE/compare/probe.py" 127.0.0.1 "$(port_of cutover)" "$WORK/admin.sock" \
        "$config" "$RELOADS" >"$WORK/probe.out" || echo "the stall probe failed" >&2
    wait "$client" || true
    head -1 "$WORK/probe.out"
    echo "| run | req/s | p99 ms | p99.9 ms | p99.99 ms | max ms | errors |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    local run
    for run in baseline under; do
        awk -v run="$run" '
            /^Requests\/sec:/ { rps = $2 }
            $1 == "99%" { p99 = $2 + 0; if ($2 ~ /us$/) p99 /= 1000; else if ($2 !~ /ms$/) p99 *= 1000 }
            /^TAIL/ { split($2, a, "="); split($3, b, "="); split($4, c, "="); t1 = a[2]; t2 = b[2]; mx = c[2] }
            /Non-2xx/ { e += $NF }
            /Socket errors/ { gsub(",", ""); e += $4 + $6 + $8 + $10 }
            END { printf "| %s | %s | %.2f | %.2f | %.2f | %.2f | %d |\n",
                  (run == "under" ? "with reloads" : "no reload"), rps, p99, t1 / 1000, t2 / 1000, mx / 1000, e }
        ' "$WORK/reload-$run.out"
    done
    echo "stall probe (one more connection, requests back to back; \"during\" = overlapping a reload's round trip):"
    tail -n +2 "$WORK/probe.out"
    stop_proxy
}

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
cat "$WORK/cert.pem" "$WORK/key.pem" >"$WORK/combined.pem"
render backends.conf
taskset -c "$LOAD_CPU" nginx -p "$WORK" -c "$WORK/backends.conf" -e "$WORK/backends.err" -g 'daemon off;' &
PIDS+=("$!")
wait_port "$STABLE"
wait_port "$CANARY"

echo "$("$CUTOVER" --version 2>/dev/null | head -1), $(nginx -v 2>&1), $(haproxy -v | head -1 | cut -d' ' -f1-3)"
echo "proxy on CPU $PROXY_CPU, load generator and backends on CPU $LOAD_CPU, $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "work dir: $WORK"
for section in $SECTIONS; do
    case $section in
        http | tls | h2 | http-log | tls-log | h2-log | http-stdout) load_section "$section" ;;
        http-fleet) start_etcd && load_section "$section" ;;
        idle) idle_section ;;
        reload) reload_section ;;
        *) echo "unknown section: $section" >&2 ;;
    esac
done
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
