#!/usr/bin/env bash
# The figures of "one client cannot stop payments" (benches/README.md has the latest): the
# release gateway on the example configuration's defaults, under each attack, from several
# addresses of 127.0.0.0/8, measured beside the same run without the attack (benches/flood.py):
#   burst   2,000 clients connecting at once, the gateway and a plain nginx proxy in one run
#   hold    one address, or 64, holding every connection the gateway allows (HTTP/1 keep-alive,
#           idle HTTP/2, callbacks that declared a body and send none): a valid callback's time
#   flood   a 15 s keep-alive flood of forged callbacks from one address (wrk): valid callbacks
#           from another address, log lines a second, ledger growth
#   outage  30 refused callbacks a second from one address, 300 in all: all recorded, recheck
#   disk    forged 16 KiB callbacks against a ledger on a small tmpfs (needs root to mount)
#
#   benches/flood.sh                       # every scenario, about 5 minutes
#   SCENARIOS=burst,hold benches/flood.sh  # some of them
#
# Installs what it needs (nginx, wrk), builds the release binary, and stops every
# process it started, by pid, on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

. benches/common.sh
install_missing nginx:nginx wrk:wrk python3:python3
cargo build --release --quiet
# Thousands of connections from the clients, as many in the gateway.
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

UP=$(free_port); PROXY=$(free_port)
upstream_conf "$work/up" "$UP"
# The peer of the burst: nginx as a reverse proxy, with its Linux defaults (backlog 511,
# multi_accept off), as many workers as the gateway has.
proxy_conf "$work/proxy" "$UP" "worker_processes $(nproc);" "        listen 127.0.0.1:$PROXY;"
# nginx's own burst must not be limited by its worker_connections either.
sed -i 's/worker_connections 4096/worker_connections 8192/' "$work/up/nginx.conf" "$work/proxy/nginx.conf"
"$NGINX" -c "$work/up/nginx.conf" & pids+=($!)
"$NGINX" -c "$work/proxy/nginx.conf" & pids+=($!)
wait_port "$UP"; wait_port "$PROXY"

python3 benches/flood.py --gateway "$PWD/target/release/click-gateway" --upstream "$UP" \
    --nginx "$PROXY" --work "$work" --scenarios "${SCENARIOS:-burst,hold,flood,outage,disk}"
