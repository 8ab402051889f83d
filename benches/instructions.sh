#!/usr/bin/env bash
# User-space instructions per signed Prepare callback, counted by callgrind, for click-gateway,
# for nginx doing the same reverse-proxy job in front of the same upstream (verifying nothing),
# and for nginx with libnginx-mod-http-lua doing the gateway's job (benches/click_verify.lua).
# Instruction counts do not move with the noise of a shared VM the way requests/s do, so this
# is the figure to compare changes by. Each proxy runs twice under callgrind, for N1 and N2 requests; the
# difference divided by N2 - N1 is the cost of one request, start-up and shutdown cancelled.
#
#   benches/instructions.sh              # N1=500 N2=2500 by default; under a minute
#   KEEP=/tmp/cg benches/instructions.sh # keep the callgrind files, for callgrind_annotate
#   ONLY=gateway benches/instructions.sh # the gateway alone (while changing it)
#   GATEWAY=path/to/click-gateway ...    # measure that binary (no build)
#   VARIANT=shipped ...                  # append benches/variants/<name>.toml to its config
#
# Installs what it needs (valgrind, nginx, libnginx-mod-http-lua, nghttp2-client for h2load),
# builds the release binary, and stops every process it started, by pid, on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

N1=${N1:-500}
N2=${N2:-2500}

. benches/common.sh
install_missing valgrind:valgrind nginx:nginx h2load:nghttp2-client curl:curl python3:python3 \
    /usr/share/nginx/modules/ngx_http_lua_module.so:libnginx-mod-http-lua
if [ -z "${GATEWAY:-}" ]; then
    cargo build --release --quiet
    GATEWAY=$PWD/target/release/click-gateway
fi
before_cleanup() {
    if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$work"/*.callgrind "$KEEP"/; fi
}

UP=$(free_port); PROXY=$(free_port)
upstream_conf "$work/up" "$UP"
# One process (no master) so that callgrind sees all of nginx's work; the same proxy settings
# as load.sh.
proxy_conf "$work/proxy" "$UP" "master_process off;
worker_processes 1;" "        listen 127.0.0.1:$PROXY;"
KEY="bench-secret-$$"
printf '[services.12345]\nsecret_keys = ["%s"]\n' "$KEY" > "$work/keys.toml"
lua_keys_file "$work/keys.lua" 12345 "$KEY"
lua_proxy_conf "$work/nginx-lua" "$UP" "master_process off;
worker_processes 1;" "        listen 127.0.0.1:$PROXY;" "$work/keys.lua"
cat > "$work/gateway.toml" <<EOF
[server]
listen = "127.0.0.1:$PROXY"
[upstream]
url = "http://127.0.0.1:$UP"
pool_max_idle = $UPSTREAM_KEEPALIVE
[click]
keys_file = "keys.toml"
[admin]
enabled = false
EOF
SERVE_ARGS=(--log-level warn)
if [ -n "${VARIANT:-}" ]; then
    line=$(grep -m1 '^# serve-args:' "benches/variants/$VARIANT.toml" || true)
    [ -z "$line" ] || read -r -a SERVE_ARGS <<< "${line#\# serve-args:}"
    # The variant's own admin listener does not apply here (nor its log file: logs go to the
    # callgrind run's log).
    grep -v '^# serve-args:' "benches/variants/$VARIANT.toml" \
        | awk '/^\[admin\]/ { skip = 1; next } /^\[/ { skip = 0 } !skip' \
        | sed "s#@DIR@#$work#g" >> "$work/gateway.toml"
fi
BENCH_KEY=$KEY "$GATEWAY" sign --action prepare --service-id 12345 --click-trans-id 2103040001 \
    --merchant-trans-id order-1 --amount 1000.00 --sign-time "2026-11-28 12:00:00" \
    --secret-env BENCH_KEY | tr -d '\n' > "$work/body"

"$NGINX" -c "$work/up/nginx.conf" & pids+=($!)
wait_port "$UP"

TOTAL=0
count() { # name requests command... -> sets TOTAL: instructions of the command serving them
    local name=$1 n=$2; shift 2
    local out=$work/$name.$n.callgrind
    valgrind --tool=callgrind --callgrind-out-file="$out" "$@" \
        >"$work/$name.$n.stdout" 2>"$work/$name.$n.log" &
    local pid=$!
    pids+=("$pid")
    wait_port "$PROXY" 60   # under valgrind, start-up takes seconds
    # A 200 proves nothing on a callback path (Click's errors are 200s too): the body must
    # verify, or this would measure the reject-and-diagnose path.
    case "$(curl -s -H 'content-type: application/x-www-form-urlencoded' --data-binary @"$work/body" \
            "http://127.0.0.1:$PROXY/click/prepare/")" in
        *'"error":0'*) ;;
        *) echo "$name: the signed body was not answered with error 0" >&2; exit 1 ;;
    esac
    h2load --h1 -n "$((n - 1))" -c 4 -t 1 -d "$work/body" \
        -H 'content-type: application/x-www-form-urlencoded' \
        "http://127.0.0.1:$PROXY/click/prepare/" > "$work/$name.$n.h2load"
    grep -q "$((n - 1)) succeeded, 0 failed, 0 errored" "$work/$name.$n.h2load" &&
        grep -q "status codes: $((n - 1)) 2xx" "$work/$name.$n.h2load" || {
        echo "$name: not every request was answered 2xx" >&2; cat "$work/$name.$n.h2load" >&2; exit 1; }
    kill -TERM "$pid"
    wait "$pid" || true
    # Waited for: forget it, since its id may be reused by the time cleanup runs.
    local keep=() p
    for p in "${pids[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
    pids=("${keep[@]}")
    TOTAL=$(awk '/^(summary|totals):/ {print $2; exit}' "$out")
}

PER_REQUEST=0
per_request() { # name command... -> sets PER_REQUEST
    local name=$1; shift
    count "$name" "$N1" "$@"; local a=$TOTAL
    count "$name" "$N2" "$@"; local b=$TOTAL
    PER_REQUEST=$(( (b - a) / (N2 - N1) ))
}

per_request gateway "$GATEWAY" serve --config "$work/gateway.toml" "${SERVE_ARGS[@]}"
gw=$PER_REQUEST
if [ "${ONLY:-}" = gateway ]; then
    echo "click-gateway: $gw user-space instructions per signed Prepare callback${VARIANT:+ ($VARIANT)}"
    exit 0
fi
per_request nginx "$NGINX" -c "$work/proxy/nginx.conf"
ngx=$PER_REQUEST
per_request nginx-lua "$NGINX" -c "$work/nginx-lua/nginx.conf"
lua=$PER_REQUEST
echo "user-space instructions per signed Prepare callback ($N1 vs $N2 requests, h2load --h1 -c 4):"
echo "  nginx reverse proxy:  $ngx (verifies nothing)"
echo "  nginx + Lua:          $lua (verifies each, benches/click_verify.lua)"
echo "  click-gateway:        $gw (verifies each)"
python3 -c "print('  gateway / nginx+Lua:  %.2f' % ($gw / $lua)); print('  gateway / nginx:      %.2f' % ($gw / $ngx))"
