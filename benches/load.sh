#!/usr/bin/env bash
# Load benchmark: the same fast upstream reached directly, through nginx as a reverse proxy, and
# through click-gateway (which also verifies every callback's signature), in the same run, on
# loopback, target after target for several rounds. Prints requests/s and latency for each,
# the per-round ratios gateway/nginx and their median, and memory figures.
#
#   benches/load.sh                      # ROUNDS=3 DURATION=8 CONNS=64 by default
#   ROUNDS=5 DURATION=10 benches/load.sh
#
# Installs what it needs (nginx-light, wrk, nghttp2-client for h2load, openssl) when missing,
# builds the release binary, and stops every process it started, by pid, on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
CONNS=${CONNS:-64}
H2_CONNS=${H2_CONNS:-16}
H2_STREAMS=${H2_STREAMS:-8}
IDLE_CONNS=${IDLE_CONNS:-1000}
THREADS=$(nproc)

. benches/common.sh
install_missing nginx:nginx-light curl:curl wrk:wrk h2load:nghttp2-client openssl:openssl python3:python3
cargo build --release --quiet
GATEWAY=$PWD/target/release/click-gateway
# Room for the idle-connection measurement and the load generators.
ulimit -n "$(( IDLE_CONNS + 4096 ))" 2>/dev/null || ulimit -n "$(ulimit -Hn)"

UP=$(free_port); NGX=$(free_port); NGX_TLS=$(free_port); GW=$(free_port); GW_TLS=$(free_port)

# A throw-away certificate for the HTTP/2-over-TLS runs.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null

upstream_conf "$work/up" "$UP"
# The peer: nginx as a reverse proxy, as many workers as the gateway has threads.
proxy_conf "$work/proxy" "$UP" "worker_processes $THREADS;" "
        listen 127.0.0.1:$NGX;
        listen 127.0.0.1:$NGX_TLS ssl http2;
        ssl_certificate $work/cert.pem;
        ssl_certificate_key $work/key.pem;"

KEY="bench-secret-$$"
cat > "$work/keys.toml" <<EOF
[services.12345]
secret_keys = ["$KEY"]
EOF
cat > "$work/gateway.toml" <<EOF
[server]
listen = "127.0.0.1:$GW"
tls_listen = "127.0.0.1:$GW_TLS"
tls_cert = "cert.pem"
tls_key = "key.pem"
[upstream]
url = "http://127.0.0.1:$UP"
pool_max_idle = 64
[click]
keys_file = "keys.toml"
[admin]
enabled = false
EOF

"$NGINX" -c "$work/up/nginx.conf" & pids+=($!)
"$NGINX" -c "$work/proxy/nginx.conf" & pids+=($!)
# Logs at warn for both: nginx runs with access_log off.
"$GATEWAY" serve --config "$work/gateway.toml" --log-level warn & GW_PID=$!
pids+=("$GW_PID")
for p in $UP $NGX $NGX_TLS $GW $GW_TLS; do wait_port "$p"; done
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
fresh_gw=$(rss_kib "$GW_PID")

# A pool of distinct signed Prepare bodies, rotated by wrk.
BENCH_KEY=$KEY python3 - "$GATEWAY" > "$work/post.lua" <<'EOF'
import os, subprocess, sys
bodies = []
for i in range(200):
    out = subprocess.run(
        [sys.argv[1], "sign", "--action", "prepare", "--service-id", "12345",
         "--click-trans-id", str(2103040000 + i), "--merchant-trans-id", f"order-{i}",
         "--amount", f"{1000 + i}.00", "--sign-time", "2026-11-28 12:00:00", "--secret-env", "BENCH_KEY"],
        check=True, capture_output=True, text=True).stdout.strip()
    bodies.append(out)
print("local bodies = {" + ",".join('"%s"' % b for b in bodies) + "}")
print('''
local i = 0
request = function()
  i = i + 1
  return wrk.format("POST", "/click/prepare/",
    {["Content-Type"] = "application/x-www-form-urlencoded", ["Host"] = "shop.example"},
    bodies[(i % #bodies) + 1])
end''')
EOF
# The gateway must really verify them: one through curl first.
first=$(sed -n 's/^local bodies = {"\([^"]*\)".*/\1/p' "$work/post.lua")
answer=$(curl -s -H 'Content-Type: application/x-www-form-urlencoded' --data-binary "$first" "http://127.0.0.1:$GW/click/prepare/")
case "$answer" in *'"error":0'*) ;; *) echo "the gateway did not forward a signed body: $answer" >&2; exit 1 ;; esac

results=$work/results.tsv
: > "$results"
run_wrk() { # scenario target port [script]
    local scenario=$1 target=$2 port=$3 script=${4:-}
    local out
    if [ -n "$script" ]; then
        out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s "$script" "http://127.0.0.1:$port/click/prepare/")
    else
        out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H 'Host: shop.example' "http://127.0.0.1:$port/api/ping")
    fi
    OUT=$out python3 - "$scenario" "$target" "$round" >> "$results" <<'EOF'
import os, re, sys
out = os.environ["OUT"]
def ms(v):
    n, unit = re.match(r"([\d.]+)(us|ms|s)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
p50 = ms(re.search(r"\s50%\s+(\S+)", out).group(1))
p99 = ms(re.search(r"\s99%\s+(\S+)", out).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
bad = re.search(r"Socket errors: (.*)", out)
print("\t".join([sys.argv[1], sys.argv[2], sys.argv[3], "%.0f" % rps, "%.3f" % p50, "%.3f" % p99,
                 errors.group(1) if errors else "0", (bad.group(1) if bad else "").replace("\t", " ")]))
EOF
}
run_h2() { # target port
    local target=$1 port=$2 out
    out=$(h2load -D "$DURATION" -c "$H2_CONNS" -m "$H2_STREAMS" -t1 "https://127.0.0.1:$port/api/ping" 2>&1)
    OUT=$out python3 - "$target" "$round" >> "$results" <<'EOF'
import os, re, sys
out = os.environ["OUT"]
rps = float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out).group(1))
mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out).group(1)
n, unit = re.match(r"([\d.]+)(us|ms|s)", mean).groups()
mean_ms = float(n) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
failed = re.search(r"requests: .* (\d+) failed", out).group(1)
print("\t".join(["h2-tls-get", sys.argv[1], sys.argv[2], "%.0f" % rps, "%.3f" % mean_ms, "", failed, ""]))
EOF
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
echo "wrk -t1 -c$CONNS -d${DURATION}s; h2load -c$H2_CONNS -m$H2_STREAMS -D$DURATION; $ROUNDS rounds"
for round in $(seq 1 "$ROUNDS"); do
    for target in direct nginx gateway; do
        case $target in direct) port=$UP ;; nginx) port=$NGX ;; gateway) port=$GW ;; esac
        run_wrk signed-prepare "$target" "$port" "$work/post.lua"
        run_wrk plain-get "$target" "$port"
    done
    run_h2 nginx "$NGX_TLS"
    run_h2 gateway "$GW_TLS"
done

# Memory: the gateway just started (above), idle after the load, then holding idle
# keep-alive connections.
idle_gw=$(rss_kib "$GW_PID")
hold() { # port -> holds $IDLE_CONNS keep-alive connections until stdin closes
    python3 - "$1" "$IDLE_CONNS" <<'EOF'
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
socks = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /api/ping HTTP/1.1\r\nHost: shop.example\r\n\r\n")
    socks.append(s)
for s in socks:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            sys.exit("the gateway closed an idle connection before answering")
        data += chunk
print("held", flush=True)
sys.stdin.read()
EOF
}
coproc HOLD { hold "$GW"; }
read -r _ <&"${HOLD[0]}"
held_gw=$(rss_kib "$GW_PID")
eval "exec ${HOLD[1]}>&-"; wait "$HOLD_PID" 2>/dev/null || true

python3 - "$results" "$idle_gw" "$held_gw" "$IDLE_CONNS" "$fresh_gw" <<'EOF'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
idle, held, n, fresh = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
print()
print("%-16s %-8s %5s %10s %9s %9s %7s" % ("scenario", "target", "round", "req/s", "p50 ms", "p99 ms", "non2xx"))
for s, t, r, rps, p50, p99, bad, err in rows:
    print("%-16s %-8s %5s %10s %9s %9s %7s %s" % (s, t, r, rps, p50, p99 or "(mean)", bad, err))
print()
for scenario in dict.fromkeys(r[0] for r in rows):
    by = {}
    for s, t, r, rps, p50, p99, *_ in rows:
        if s == scenario:
            by.setdefault(r, {})[t] = (float(rps), float(p99 or p50))
    ratios = [v["gateway"][0] / v["nginx"][0] for v in by.values() if "gateway" in v and "nginx" in v]
    p99s = [v["gateway"][1] / v["nginx"][1] for v in by.values() if "gateway" in v and "nginx" in v]
    med = lambda t, i: statistics.median(v[t][i] for v in by.values() if t in v)
    line = "%-16s gateway/nginx req/s per round: %s  median %.2f" % (
        scenario, " ".join("%.2f" % x for x in ratios), statistics.median(ratios))
    line += "   p99 (mean for h2) gateway/nginx median %.2f" % statistics.median(p99s)
    print(line)
    print("%-16s median req/s: %s" % ("", "  ".join("%s %.0f" % (t, med(t, 0)) for t in ("direct", "nginx", "gateway") if any(t in v for v in by.values()))))
print()
print("gateway RSS: idle at start %.1f MiB, idle after the load %.1f MiB, with %d idle keep-alive connections %.1f MiB" % (fresh / 1024, idle / 1024, n, held / 1024))
EOF
