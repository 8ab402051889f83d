#!/usr/bin/env bash
# Load benchmark, like with like: the same fast upstream reached directly, through plain nginx
# as a reverse proxy (verifies nothing), through nginx with Debian's libnginx-mod-http-lua
# doing the gateway's job (benches/click_verify.lua: md5 with ngx.md5, Click's -1/-3/-8 answered
# itself, valid callbacks forwarded over a keep-alive pool), and through click-gateway in each
# of its variants (benches/variants/<name>.toml, appended to the generated gateway.toml).
#
# The primary figure is the CPU time each server spends per request (per connection for the
# fresh-TLS scenario): utime + stime from /proc/<pid>/stat, nginx's master and workers
# together, the gateway's process with all its threads, taken across the measured run and
# divided by the requests completed in it. Unlike requests/s it does not depend on how much of
# the two shared cores the load generator takes. Requests/s and p50/p99 are kept beside it.
#
# Scenarios (SCENARIOS, in this order by default):
#   signed-prepare  wrk, keep-alive, a distinct signed Prepare per request (benches/signed.lua)
#   fresh-tls       ab over HTTPS without -k: a TLS handshake and one signed Prepare per
#                   connection (the same body each time: ab sends one file)
#   h2-tls-get      h2load, HTTP/2 over TLS, GETs (the nginx+Lua peer only proxies those)
#   plain-get       wrk, keep-alive GETs
#   h2-tls-prepare  (not by default) h2load, HTTP/2 over TLS, one signed Prepare body repeated
# Before measuring, every peer is sent the check cases of benches/callbacks.py (valid Prepare
# and Complete callbacks and the protocol's test vectors must reach the upstream; forged ones
# must get -1, missing fields -8, action=7 -3, each with Click's exact JSON), over HTTP and
# HTTPS, and the negotiated TLS parameters are printed.
#
# Rounds run target after target (the order rotated each round), so that drift on a shared
# machine falls on every target alike; the ratios are medians of per-round ratios.
#
#   benches/load.sh                          # ROUNDS=3 DURATION=8 by default
#   ROUNDS=5 DURATION=10 VARIANTS="bare logged shipped" benches/load.sh
#   SCENARIOS="signed-prepare" KEEP=/tmp/load benches/load.sh   # keep results.tsv and logs
#
# Installs what it needs when missing (nginx, libnginx-mod-http-lua, wrk, apache2-utils,
# nghttp2-client, openssl, curl), builds the release binary, and stops every process it
# started, by pid, on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
CONNS=${CONNS:-64}
TLS_CONNS=${TLS_CONNS:-16}
H2_CONNS=${H2_CONNS:-16}
H2_STREAMS=${H2_STREAMS:-8}
IDLE_CONNS=${IDLE_CONNS:-1000}
SCENARIOS=${SCENARIOS:-"signed-prepare fresh-tls h2-tls-get plain-get"}
VARIANTS=${VARIANTS:-"bare shipped"}
# Distinct bodies per signed-prepare run; a run that outlasts them starts over (noted).
POOL=${POOL:-$(( DURATION * 100000 ))}
THREADS=$(nproc)
TICK=$(getconf CLK_TCK)

. benches/common.sh
install_missing nginx:nginx /usr/share/nginx/modules/ngx_http_lua_module.so:libnginx-mod-http-lua \
    curl:curl wrk:wrk ab:apache2-utils h2load:nghttp2-client openssl:openssl python3:python3
cargo build --release --quiet
GATEWAY=$PWD/target/release/click-gateway
# Room for the idle-connection measurement and the load generators.
ulimit -n "$(( IDLE_CONNS + 4096 ))" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
PG_PID=
before_cleanup() {
    if [ -n "${KEEP:-}" ]; then
        mkdir -p "$KEEP" && cp "$work/results.tsv" "$work"/*.log "$KEEP"/ 2>/dev/null || true
    fi
    # PostgreSQL (not this shell's child): a fast shutdown, awaited before its directory goes.
    if [ -n "$PG_PID" ]; then
        kill -INT "$PG_PID" 2>/dev/null || true
        while kill -0 "$PG_PID" 2>/dev/null; do sleep 0.1; done
    fi
}

# The same EC P-256 certificate for every TLS listener.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null

# Keys: service 12345 with the key the load is signed with (slot 0) and the test vectors' key
# (slot 1), service 70001 with the third vector's; the same table for the gateway and the Lua.
export BENCH_KEY="bench-secret-$$"
cat > "$work/keys.toml" <<EOF
[services.12345]
secret_keys = ["$BENCH_KEY", "TEST_SECRET_aB3dE5"]
[services.70001]
secret_keys = ["fake+key/with=chars&x"]
EOF
lua_keys_file "$work/keys.lua" 12345 "$BENCH_KEY" 12345 TEST_SECRET_aB3dE5 70001 'fake+key/with=chars&x'
python3 benches/callbacks.py selftest tests/data/click-vectors.json "$GATEWAY"

declare -A PORT TLS_PORT ROOT
UP=$(free_port)
PORT[direct]=$UP
PORT[nginx]=$(free_port); TLS_PORT[nginx]=$(free_port)
PORT[nginx-lua]=$(free_port); TLS_PORT[nginx-lua]=$(free_port)
upstream_conf "$work/up" "$UP"
# Both nginx peers: as many workers as the gateway has threads.
proxy_conf "$work/nginx" "$UP" "worker_processes $THREADS;" "
        listen 127.0.0.1:${PORT[nginx]};
$(tls_listen "${TLS_PORT[nginx]}" "$work/cert.pem" "$work/key.pem")"
lua_proxy_conf "$work/nginx-lua" "$UP" "worker_processes $THREADS;" "
        listen 127.0.0.1:${PORT[nginx-lua]};
$(tls_listen "${TLS_PORT[nginx-lua]}" "$work/cert.pem" "$work/key.pem")" "$work/keys.lua"

# Gateway variants: the fragment of benches/variants/<name>.toml appended to the base
# configuration (@DIR@: the variant's scratch directory, @ADMIN_PORT@: a free port), with
# the arguments of its "# serve-args:" line, if any. A variant whose section the gateway does
# not know yet is skipped with a note; any other problem stops the run.
gateways=()
declare -A SERVE_ARGS USES_PG
# @PG_URL@: a PostgreSQL cluster of Debian's postgresql, started here (initdb in the scratch
# directory, as the postgres user: it refuses root), with its defaults (fsync and
# synchronous_commit on), for the variants whose ledger is on PostgreSQL.
PG_URL=
start_postgres() {
    install_missing /usr/lib/postgresql:postgresql
    local bin pg_port
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
    pg_port=$(free_port)
    mkdir -p "$work/pg" && chown postgres "$work/pg"
    runuser -u postgres -- "$bin/initdb" -D "$work/pg/data" -U postgres --auth=trust \
        --no-locale -E UTF8 > "$work/pg/initdb.log"
    runuser -u postgres -- "$bin/pg_ctl" -D "$work/pg/data" -l "$work/pg/server.log" -w \
        -o "-p $pg_port -k $work/pg -c listen_addresses=127.0.0.1" start > /dev/null
    PG_PID=$(head -n1 "$work/pg/data/postmaster.pid")
    PG_URL="postgres://postgres@127.0.0.1:$pg_port/postgres"
}
for v in $VARIANTS; do
    fragment=benches/variants/$v.toml
    [ -f "$fragment" ] || { echo "no variant $fragment" >&2; exit 1; }
    dir=$work/gw-$v; mkdir -p "$dir"
    ln -s "$work/cert.pem" "$work/key.pem" "$work/keys.toml" "$dir/"
    port=$(free_port); tls=$(free_port)
    if grep -q "@PG_URL@" "$fragment"; then
        [ -n "$PG_URL" ] || start_postgres
        USES_PG[gw-$v]=1
    fi
    {
        cat <<EOF
[server]
listen = "127.0.0.1:$port"
tls_listen = "127.0.0.1:$tls"
tls_cert = "cert.pem"
tls_key = "key.pem"
[upstream]
url = "http://127.0.0.1:$UP"
pool_max_idle = $UPSTREAM_KEEPALIVE
[click]
keys_file = "keys.toml"
EOF
        sed -e "s|@DIR@|$dir|g" -e "s|@ADMIN_PORT@|$(free_port)|g" -e "s|@PG_URL@|$PG_URL|g" \
            "$fragment"
    } > "$dir/gateway.toml"
    if ! "$GATEWAY" check --config "$dir/gateway.toml" > "$dir/check.out" 2>&1; then
        if grep -q "unknown section" "$dir/check.out"; then
            echo "note: variant $v skipped, this gateway does not know its configuration:" \
                "$(grep -m1 'unknown section' "$dir/check.out")"
            continue
        fi
        cat "$dir/check.out" >&2; exit 1
    fi
    # Logs at warn unless the variant says otherwise: nginx runs with access_log off.
    SERVE_ARGS[gw-$v]=$(sed -n 's/^# serve-args: *//p' "$fragment")
    SERVE_ARGS[gw-$v]=${SERVE_ARGS[gw-$v]:---log-level warn}
    PORT[gw-$v]=$port; TLS_PORT[gw-$v]=$tls
    gateways+=("gw-$v")
done
[ ${#gateways[@]} -gt 0 ] || { echo "no gateway variant to run" >&2; exit 1; }

"$NGINX" -c "$work/up/nginx.conf" & pids+=($!); ROOT[direct]=$!
"$NGINX" -c "$work/nginx/nginx.conf" & pids+=($!); ROOT[nginx]=$!
"$NGINX" -c "$work/nginx-lua/nginx.conf" & pids+=($!); ROOT[nginx-lua]=$!
for g in "${gateways[@]}"; do
    # shellcheck disable=SC2086
    "$GATEWAY" serve --config "$work/$g/gateway.toml" ${SERVE_ARGS[$g]} \
        2> "$work/$g.log" & pids+=($!); ROOT[$g]=$!
done
for t in "${!PORT[@]}"; do wait_port "${PORT[$t]}"; done
for t in "${!TLS_PORT[@]}"; do wait_port "${TLS_PORT[$t]}"; done
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
declare -A RSS_START
for g in "${gateways[@]}"; do RSS_START[$g]=$(rss_kib "${ROOT[$g]}"); done

echo "checks: every peer over HTTP and HTTPS"
for t in nginx nginx-lua "${gateways[@]}"; do
    kind=verifier; [ "$t" = nginx ] && kind=proxy
    python3 benches/callbacks.py check "http://127.0.0.1:${PORT[$t]}" $kind "$t"
    python3 benches/callbacks.py check "https://127.0.0.1:${TLS_PORT[$t]}" $kind "$t"
done
echo "TLS as negotiated by openssl s_client (ab and h2load report theirs in the results):"
for t in nginx nginx-lua "${gateways[@]}"; do
    printf '  %-10s %s\n' "$t" "$(openssl s_client -connect "127.0.0.1:${TLS_PORT[$t]}" -brief \
        < /dev/null 2>&1 | grep -E 'Protocol version|Ciphersuite|Peer signature type|Temp Key' \
        | cut -d: -f2- | xargs | tr '\n' ' ')"
done
python3 benches/callbacks.py body | tr -d '\n' > "$work/body"

results=$work/results.tsv
: > "$results"
runs=0
# measure scenario target round: one load run, with the CPU of the target's processes and of
# the upstream taken just before and just after it.
measure() {
    local scenario=$1 target=$2 round=$3 port=${PORT[$2]:-} tls=${TLS_PORT[$2]:-} cmd tool
    case $scenario in
        signed-prepare)
            runs=$((runs + 1))
            python3 benches/callbacks.py pool "$work/pool" "$POOL" $(( 2100000000 + runs * POOL ))
            tool=wrk
            cmd=(wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s benches/signed.lua
                 "http://127.0.0.1:$port/click/prepare/" -- "$work/pool") ;;
        plain-get)
            tool=wrk
            cmd=(wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H 'Host: shop.example'
                 "http://127.0.0.1:$port/api/ping") ;;
        fresh-tls)
            tool=ab
            cmd=(ab -q -t "$DURATION" -n $(( DURATION * 10000 )) -c "$TLS_CONNS" -p "$work/body"
                 -T application/x-www-form-urlencoded "https://127.0.0.1:$tls/click/prepare/") ;;
        h2-tls-get)
            tool=h2load
            cmd=(h2load -D "$DURATION" -c "$H2_CONNS" -m "$H2_STREAMS" -t1
                 --log-file="$work/h2.log" "https://127.0.0.1:$tls/api/ping") ;;
        h2-tls-prepare)
            tool=h2load
            cmd=(h2load -D "$DURATION" -c "$H2_CONNS" -m "$H2_STREAMS" -t1
                 --log-file="$work/h2.log" -d "$work/body"
                 -H 'content-type: application/x-www-form-urlencoded'
                 "https://127.0.0.1:$tls/click/prepare/") ;;
        *) echo "unknown scenario $scenario" >&2; exit 1 ;;
    esac
    rm -f "$work/h2.log"
    local user0 sys0 up0 upsys0 user1 sys1 up1 upsys1 out
    # A ledger on PostgreSQL: the server's CPU (postmaster and its backends) as well, apart.
    local pg0=0 pgsys0=0 pg1=0 pgsys1=0
    [ -n "${USES_PG[$target]:-}" ] && read -r pg0 pgsys0 <<< "$(proc_ticks "$PG_PID")"
    read -r user0 sys0 <<< "$(proc_ticks "${ROOT[$target]}")"
    read -r up0 upsys0 <<< "$(proc_ticks "${ROOT[direct]}")"
    out=$("${cmd[@]}" 2>&1)
    read -r user1 sys1 <<< "$(proc_ticks "${ROOT[$target]}")"
    read -r up1 upsys1 <<< "$(proc_ticks "${ROOT[direct]}")"
    [ -n "${USES_PG[$target]:-}" ] && read -r pg1 pgsys1 <<< "$(proc_ticks "$PG_PID")"
    OUT=$out PG_TICKS=$(( pg1 + pgsys1 - pg0 - pgsys0 )) python3 - "$tool" "$scenario" "$target" "$round" \
        $(( user1 + sys1 - user0 - sys0 )) $(( sys1 - sys0 )) $(( up1 + upsys1 - up0 - upsys0 )) \
        "$TICK" "$POOL" "$work/h2.log" >> "$results" <<'EOF'
import os, re, sys
tool, scenario, target, rnd = sys.argv[1:5]
ticks, sys_ticks, up_ticks = int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
tick, pool, h2log = int(sys.argv[8]), int(sys.argv[9]), sys.argv[10]
out = os.environ["OUT"]
def need(pattern):
    m = re.search(pattern, out)
    if not m:
        sys.exit("%s %s: no %r in the output of %s:\n%s" % (scenario, target, pattern, tool, out))
    return m
def ms(v):
    n, unit = re.match(r"([\d.]+)(us|ms|s)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
note = []
if tool == "wrk":
    n = int(need(r"(\d+) requests in")[1])
    rps = float(need(r"Requests/sec:\s+([\d.]+)")[1])
    p50, p99 = ms(need(r"\s50%\s+(\S+)")[1]), ms(need(r"\s99%\s+(\S+)")[1])
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    bad = int(m[1]) if m else 0
    m = re.search(r"Socket errors: (.*)", out)
    if m:
        note.append("socket errors: " + m[1])
    if scenario == "signed-prepare" and n > pool:
        note.append("%d requests, pool of %d: repeats" % (n, pool))
elif tool == "ab":
    n = int(need(r"Complete requests:\s+(\d+)")[1])
    rps = float(need(r"Requests per second:\s+([\d.]+)")[1])
    p50, p99 = float(need(r"\n\s+50%\s+(\d+)")[1]), float(need(r"\n\s+99%\s+(\d+)")[1])
    m = re.search(r"Non-2xx responses:\s+(\d+)", out)
    bad = (int(m[1]) if m else 0) + int(need(r"Failed requests:\s+(\d+)")[1])
    tls = need(r"SSL/TLS Protocol:\s+(\S+)")[1].split(",")[:2]
    m = re.search(r"Server Temp Key:\s+(\S+)", out)
    note.append(" ".join(tls + ([m[1].rstrip(",")] if m else [])) + " http/1.0")
else:
    n = int(need(r"requests: \d+ total, \d+ started, (\d+) done")[1])
    rps = float(need(r"finished in [\d.]+s, ([\d.]+) req/s")[1])
    failed = need(r"requests: .* (\d+) failed, (\d+) errored, (\d+) timeout")
    bad = int(failed[1]) + int(failed[2]) + int(failed[3])
    codes = need(r"status codes: (\d+) 2xx")
    bad += n - int(codes[1])
    times = sorted(int(line.split("\t")[2]) for line in open(h2log) if line.strip())
    p50, p99 = times[len(times) // 2] / 1000, times[int(len(times) * 0.99)] / 1000
    tls = [need(r"TLS Protocol: (\S+)")[1], need(r"Cipher: (\S+)")[1]]
    m = re.search(r"Server Temp Key: (\S+)", out)
    note.append(" ".join(tls + ([m[1]] if m else []) + [need(r"Application protocol: (\S+)")[1]]))
us = lambda t: t * 1e6 / tick / n if n else 0.0
if int(os.environ.get("PG_TICKS", "0")) > 0:
    note.append("postgres %.1f us/req" % us(int(os.environ["PG_TICKS"])))
print("\t".join([scenario, target, rnd, str(n), "%.0f" % rps, "%.3f" % p50, "%.3f" % p99,
                 "%.1f" % us(ticks), "%.1f" % us(sys_ticks), "%.1f" % us(up_ticks), str(bad),
                 "; ".join(note)]))
EOF
}

targets_of() { # scenario -> the targets it runs, in their order for round 1
    case $1 in
        signed-prepare|plain-get) echo direct nginx nginx-lua "${gateways[@]}" ;;
        *) echo nginx nginx-lua "${gateways[@]}" ;;
    esac
}

echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r); $(date)"
echo "wrk -t1 -c$CONNS -d${DURATION}s; ab -c$TLS_CONNS -t$DURATION; h2load -t1 -c$H2_CONNS -m$H2_STREAMS -D$DURATION; $ROUNDS rounds; CLK_TCK $TICK"
echo "scenarios: $SCENARIOS; gateway variants: ${gateways[*]}"
for round in $(seq 1 "$ROUNDS"); do
    for scenario in $SCENARIOS; do
        read -r -a ts <<< "$(targets_of "$scenario")"
        shift_by=$(( (round - 1) % ${#ts[@]} ))
        for target in "${ts[@]:$shift_by}" "${ts[@]:0:$shift_by}"; do
            measure "$scenario" "$target" "$round"
            tail -n1 "$results" | cut -f1-11 | tr '\t' ' ' | sed 's/^/  /'
        done
    done
done

# Memory: each gateway just started (above), idle after the load, then holding idle
# keep-alive connections.
hold() { # port -> holds $IDLE_CONNS keep-alive connections until stdin closes
    python3 - "$1" "$IDLE_CONNS" <<'EOF'
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
socks = []
for i in range(n):
    # From 16 addresses: below server.max_connections_per_address (256) for 4,000 of them.
    s = socket.create_connection(("127.0.0.1", port), source_address=(f"127.0.3.{1 + i % 16}", 0))
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
memory=$work/memory.tsv
: > "$memory"
for g in "${gateways[@]}"; do
    idle=$(rss_kib "${ROOT[$g]}")
    coproc HOLD { hold "${PORT[$g]}"; }
    read -r _ <&"${HOLD[0]}"
    held=$(rss_kib "${ROOT[$g]}")
    eval "exec ${HOLD[1]}>&-"; wait "$HOLD_PID" 2>/dev/null || true
    printf '%s\t%s\t%s\t%s\n' "$g" "${RSS_START[$g]}" "$idle" "$held" >> "$memory"
done

python3 - "$results" "$memory" "$IDLE_CONNS" <<'EOF'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
med = statistics.median
fmt = "%-15s %-10s %5s %9s %9s %8s %8s %8s %8s %8s %5s  %s"
print()
print(fmt % ("scenario", "target", "round", "requests", "req/s", "p50 ms", "p99 ms", "CPU us",
             "kernel", "up us", "bad", "note"))
for row in rows:
    print(fmt % tuple(row))
if any(int(r[10]) for r in rows):
    print("\nWARNING: some runs had failed or non-2xx answers (column bad): see above")

# scenario -> target -> round -> (CPU, req/s, p50, p99, kernel CPU, upstream CPU)
CPU, RPS, P50, P99, KERNEL, UP = range(6)
data = {}
for s, t, r, n, rps, p50, p99, cpu, kernel, up, *_ in rows:
    data.setdefault(s, {}).setdefault(t, {})[r] = tuple(map(float, (cpu, rps, p50, p99, kernel, up)))
gateways = [t for t in dict.fromkeys(r[1] for r in rows) if t.startswith("gw-")]
peers = ("nginx-lua", "nginx")
unit = lambda s: "conn" if s == "fresh-tls" else "req"

def ratios(s, a, b, i):
    """a / b of figure i, round by round (rounds where both ran)."""
    da, db = data[s].get(a, {}), data[s].get(b, {})
    return [da[r][i] / db[r][i] for r in sorted(da, key=int) if r in db and db[r][i]]

medians = {}
for s, by_target in data.items():
    print("\n%s: medians over %d rounds" % (s, len({r for t in by_target.values() for r in t})))
    print("  %-10s %12s %7s %9s %8s %8s %12s" % ("target", "CPU us/" + unit(s), "kernel",
                                                 "req/s", "p50 ms", "p99 ms", "upstream us"))
    for t, by in by_target.items():
        m = medians[s, t] = [med(v[i] for v in by.values()) for i in range(6)]
        print("  %-10s %12.1f %6.0f%% %9.0f %8.2f %8.2f %12.1f" % (
            t, m[CPU], 100 * m[KERNEL] / m[CPU] if m[CPU] else 0, m[RPS], m[P50], m[P99], m[UP]))
    for g in gateways:
        for peer in peers:
            cpu = ratios(s, g, peer, CPU)
            if cpu:
                print("  %s / %-9s CPU per %s %s  median %.2f;  req/s median %.2f;  p99 median %.2f"
                      % (g, peer, unit(s), " ".join("%.2f" % x for x in cpu), med(cpu),
                         med(ratios(s, g, peer, RPS)), med(ratios(s, g, peer, P99))))

print("\nMarkdown (medians over the rounds; ratios: medians of the per-round ratios):\n")
print("| scenario | target | CPU µs | of which kernel | req/s | p50 ms | p99 ms "
      "| CPU vs nginx+Lua | CPU vs plain nginx | req/s vs nginx+Lua | p99 vs nginx+Lua |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
names = {"direct": "upstream alone", "nginx": "plain nginx", "nginx-lua": "nginx+Lua"}
for (s, t), m in medians.items():
    cells = [""] * 4
    if t in gateways:
        for k, (peer, i) in enumerate([("nginx-lua", CPU), ("nginx", CPU), ("nginx-lua", RPS),
                                        ("nginx-lua", P99)]):
            rs = ratios(s, t, peer, i)
            cells[k] = ("**%.2f**" if k < 2 else "%.2f") % med(rs) if rs else ""
    print("| %s | %s | %.1f | %.1f | %.0f | %.2f | %.2f | %s |" % (
        s + (" (per connection)" if s == "fresh-tls" else ""), names.get(t, "gateway " + t[3:]),
        m[CPU], m[KERNEL], m[RPS], m[P50], m[P99], " | ".join(cells)))

print()
n = int(sys.argv[3])
for line in open(sys.argv[2]):
    g, fresh, idle, held = line.split()
    print("%s RSS: idle at start %.1f MiB, idle after the load %.1f MiB, with %d idle keep-alive "
          "connections %.1f MiB" % (g, int(fresh) / 1024, int(idle) / 1024, n, int(held) / 1024))
EOF
