# Shared by load.sh and instructions.sh (sourced, not run): installing what is missing,
# ports, process cleanup, CPU time of a process, and the nginx upstream and the two nginx
# peers the gateway is measured against (plain reverse proxy; nginx+Lua doing the gateway's
# job with benches/click_verify.lua), so that both scripts measure the same setup.

NGINX=/usr/sbin/nginx   # not on a non-root user's PATH

# install_missing command:package ...: installs the Debian packages whose command is absent
# (a command given as an absolute path is a file that must exist, e.g. an nginx module).
install_missing() {
    local missing=() pair
    for pair in "$@"; do
        local cmd=${pair%%:*} pkg=${pair#*:}
        if [ "$cmd" = nginx ]; then [ -x "$NGINX" ] || missing+=("$pkg"); continue; fi
        if [ "${cmd#/}" != "$cmd" ]; then [ -e "$cmd" ] || missing+=("$pkg"); continue; fi
        command -v "$cmd" >/dev/null || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        local sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
    fi
}

# A scratch directory and the pids to stop on exit; a script may define before_cleanup().
work=$(mktemp -d)
# nginx's workers run as nobody when started by root: they must reach their temp paths here
# (nginx hands those to nobody itself) to buffer a large request body.
chmod 755 "$work"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if declare -F before_cleanup >/dev/null; then before_cleanup || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_port port [seconds]: until something accepts on the port (10 s by default).
wait_port() {
    local tries=$(( ${2:-10} * 10 ))
    for _ in $(seq 1 "$tries"); do
        (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on $1" >&2; exit 1
}

# nginx's header of one instance living in directory $1: no daemon, its own pid, logs and
# temp paths, keep-alive connections that never run out of requests. $2: main-context lines.
nginx_head() {
    local dir=$1
    cat <<EOF
$2
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
EOF
}
nginx_http_common() {
    local dir=$1
    cat <<EOF
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $dir; proxy_temp_path $dir; fastcgi_temp_path $dir;
    uwsgi_temp_path $dir; scgi_temp_path $dir;
EOF
}

# upstream_conf dir port: the fast upstream, nginx answering a fixed JSON to any method.
upstream_conf() {
    local dir=$1 port=$2
    mkdir -p "$dir"
    cat > "$dir/nginx.conf" <<EOF
$(nginx_head "$dir" "worker_processes 1;")
http {
$(nginx_http_common "$dir")
    keepalive_timeout 60s;
    server {
        listen 127.0.0.1:$port;
        location / {
            default_type application/json;
            return 200 '{"click_trans_id":1,"merchant_trans_id":"o","merchant_prepare_id":5001,"error":0,"error_note":"Success"}';
        }
    }
}
EOF
}

# Idle upstream connections kept per worker, by both nginx peers (keepalive) and the gateway
# (upstream.pool_max_idle): more than any scenario has requests in flight (wrk 64, h2load
# 16 x 8 = 128), even if every connection lands on one worker. With fewer, a worker that took
# most of the connections closes and reopens upstream connections on every burst (nginx did,
# for one HTTP/2 request in five), and the figures measure how accepts fell, not the proxy.
UPSTREAM_KEEPALIVE=256

# The upstream pool and the forwarding headers both nginx peers use (the gateway's: Host kept,
# X-Forwarded-For and -Proto replaced).
proxy_upstream() {
    cat <<EOF
    upstream backend {
        server 127.0.0.1:$1;
        keepalive $UPSTREAM_KEEPALIVE;
    }
EOF
}
proxy_headers() {
    cat <<'EOF'
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header X-Forwarded-Proto $scheme;
EOF
}

# proxy_conf dir upstream_port main_lines listen_lines: the peer, nginx as a reverse proxy
# with upstream keep-alive, setting the same forwarding headers as the gateway.
proxy_conf() {
    local dir=$1 up=$2
    mkdir -p "$dir"
    cat > "$dir/nginx.conf" <<EOF
$(nginx_head "$dir" "$3")
http {
$(nginx_http_common "$dir")
$(proxy_upstream "$up")
    server {
$4
        location / {
            proxy_pass http://backend;
$(proxy_headers)
        }
    }
}
EOF
}

# tls_listen port cert key: an HTTPS listener with HTTP/2 and TLS 1.2 and 1.3, as the gateway's.
tls_listen() {
    cat <<EOF
        listen 127.0.0.1:$1 ssl http2;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_certificate $2;
        ssl_certificate_key $3;
EOF
}

# lua_keys_file file service key [service key ...]: the per-service key table that
# click_verify.lua loads (a service named twice holds both keys, in order, like secret_keys).
lua_keys_file() {
    local file=$1; shift
    python3 - "$@" > "$file" <<'EOF'
import sys
args, keys = sys.argv[1:], {}
for service, key in zip(args[::2], args[1::2]):
    keys.setdefault(service, []).append(key)
# Letters and digits as they are, every other byte as a three-digit Lua escape.
lua = lambda s: '"' + "".join(chr(b) if chr(b).isalnum() and b < 128 else "\\%03d" % b
                              for b in s.encode()) + '"'
print("return {")
for service, ks in keys.items():
    print("    [%s] = { %s }," % (lua(service), ", ".join(lua(k) for k in ks)))
print("}")
EOF
}

# lua_proxy_conf dir upstream_port main_lines listen_lines keys_lua: the peer doing the
# gateway's job, nginx with Debian's libnginx-mod-http-lua. The callback paths run
# benches/click_verify.lua in the access phase (Click's -1/-3/-8 answered there, verified
# callbacks marked with X-Click-Signature-Verified); everything else is proxied as by
# proxy_conf. The same upstream pool and forwarding headers.
lua_proxy_conf() {
    local dir=$1 up=$2 keys=$5 lua_dir
    lua_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
    mkdir -p "$dir"
    local callback="
            access_by_lua_block { require(\"click_verify\").access() }
            proxy_pass http://backend;"
    cat > "$dir/nginx.conf" <<EOF
load_module /usr/share/nginx/modules/ndk_http_module.so;
load_module /usr/share/nginx/modules/ngx_http_lua_module.so;
$(nginx_head "$dir" "$3")
http {
$(nginx_http_common "$dir")
    lua_package_path "$lua_dir/?.lua;;";
    init_by_lua_block { require("click_verify").load_keys("$keys") }
$(proxy_upstream "$up")
    server {
$4
        # A callback is read whole into memory (click_verify.lua refuses one that is not).
        client_body_buffer_size 16k;
        set \$click_verified "";
$(proxy_headers)
        # Set by click_verify.lua on a verified callback only; a client's own is replaced,
        # and so are the forwarding fields the gateway drops.
        proxy_set_header X-Click-Signature-Verified \$click_verified;
        proxy_set_header Forwarded "";
        proxy_set_header X-Forwarded-Host "";
        proxy_set_header X-Forwarded-Port "";
        proxy_set_header X-Real-IP "";
        location = /click/prepare/ {$callback
        }
        location = /click/complete/ {$callback
        }
        location / {
            proxy_pass http://backend;
        }
    }
}
EOF
}

# proc_ticks pid: CPU time in clock ticks, user then system, of the process with all its threads
# and of its children (an nginx master's workers): /proc/<pid>/stat fields 14 and 15.
proc_ticks() {
    local user=0 system=0 pid stat kids=()
    { read -r -a kids < "/proc/$1/task/$1/children"; } 2>/dev/null || true
    for pid in "$1" "${kids[@]}"; do
        stat=$(< "/proc/$pid/stat") || continue
        # After the command name (which may hold spaces): field 3 onwards.
        read -r -a f <<< "${stat##*) }"
        user=$(( user + f[11] )); system=$(( system + f[12] ))
    done
    echo "$user $system"
}
