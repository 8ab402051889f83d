#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine:
#   - curl (the CLI tests drive the real binary with it),
#   - systemd-analyze (checks the shipped unit file), openssl (certs/generate.sh),
#   - a Python virtualenv in target/test-venv with Django and gunicorn (the real backend of the
#     end-to-end test), pinned in tests/django/requirements.txt.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@"
}

missing=()
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
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
echo "test dependencies ready: curl, $("$venv/bin/python" -m gunicorn --version 2>&1 | head -1), Django $("$venv/bin/python" -c 'import django; print(django.__version__)')"
