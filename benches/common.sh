# Shared by load.sh and instructions.sh (sourced, not run): installing what is missing,
# ports, process cleanup, and the nginx upstream and reverse proxy that the gateway is
# measured against, so that both scripts measure the same setup.

NGINX=/usr/sbin/nginx   # not on a non-root user's PATH

# install_missing command:package ...: installs the Debian packages whose command is absent.
install_missing() {
    local missing=() pair
    for pair in "$@"; do
        local cmd=${pair%%:*} pkg=${pair#*:}
        if [ "$cmd" = nginx ]; then [ -x "$NGINX" ] || missing+=("$pkg"); continue; fi
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

# proxy_conf dir upstream_port main_lines listen_lines: the peer, nginx as a reverse proxy
# with upstream keep-alive, setting the same forwarding headers as the gateway.
proxy_conf() {
    local dir=$1 up=$2
    mkdir -p "$dir"
    cat > "$dir/nginx.conf" <<EOF
$(nginx_head "$dir" "$3")
http {
$(nginx_http_common "$dir")
    upstream backend {
        server 127.0.0.1:$up;
        keepalive 64;
    }
    server {
$4
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto \$scheme;
        }
    }
}
EOF
}
