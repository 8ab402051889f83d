#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine, only what is missing:
#   - curl (the CLI and TLS tests drive the real binary with it),
#   - systemd-analyze (checks the shipped unit file) and procps (/bin/kill, which the unit uses),
#   - openssl (certs/generate.sh), a C compiler (ring builds C),
#   - promtool, from Debian's prometheus package (checks and unit-tests config/alerts.yml),
#   - PostgreSQL's server binaries (initdb, pg_ctl in /usr/lib/postgresql/<version>/bin), from
#     Debian's postgresql package: tests/postgres.rs starts a private cluster per test (the
#     package's own cluster is not used) and runs it as the postgres user the package creates,
#     with runuser (util-linux) when the tests run as root,
#   - a Python virtualenv in target/test-venv with Django and gunicorn (the real backend of
#     the end-to-end tests), pinned in tests/django/requirements.txt.
# The Rust toolchain itself (cargo 1.88 or later) must already be there.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "tests/setup.sh: cargo is missing: install the Rust toolchain (rustup) first" >&2
    exit 1
fi

apt_install() {
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || { echo "tests/setup.sh: run as root or install sudo to get: $*" >&2; exit 1; }
        sudo="sudo"
    fi
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

missing=()
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
[ -x /bin/kill ] || missing+=(procps)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
command -v runuser >/dev/null 2>&1 || missing+=(util-linux)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}"
fi

venv=target/test-venv
if ! "$venv/bin/python" -c 'import django, gunicorn' >/dev/null 2>&1; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/django/requirements.txt
fi
echo "test dependencies ready: curl, $("$venv/bin/python" -m gunicorn --version 2>&1 | head -1), Django $("$venv/bin/python" -c 'import django; print(django.__version__)'), PostgreSQL $(ls /usr/lib/postgresql | sort -n | tail -1)"
