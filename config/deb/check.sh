#!/usr/bin/env bash
# Builds the Debian package (`cargo deb`, installing cargo-deb when missing) and checks what it
# holds: control fields, files and their modes, conffiles, maintainer scripts, the packaged
# unit (systemd-analyze verify) and configuration (the packaged binary's `check`).
#
#   config/deb/check.sh             # build and inspect; changes nothing outside target/
#   config/deb/check.sh --install   # also install it on this machine (root), check the user,
#                                   # directories and modes, reinstall, purge, and leave the
#                                   # machine as it was (.ci/run does this)
#
# The install test is skipped (with a note) when this machine already has click-gateway:
# the package, /etc/click-gateway or /var/lib/click-gateway.
set -euo pipefail
cd "$(dirname "$0")/../.."

install_test=false
case "${1:-}" in
    --install) install_test=true ;;
    "") ;;
    *) echo "usage: config/deb/check.sh [--install]" >&2; exit 2 ;;
esac

step() { printf '\n== %s\n' "$*"; }
fail() { echo "config/deb/check.sh: FAIL: $*" >&2; exit 1; }

sudo=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo"; fi

apt_install() {
    [ "$(id -u)" -eq 0 ] || [ -n "$sudo" ] || fail "run as root or install sudo to get: $*"
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

step "tools"
missing=()
command -v dpkg-deb >/dev/null 2>&1 || missing+=(dpkg)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v objcopy >/dev/null 2>&1 || missing+=(binutils)   # cargo-deb splits debug symbols with it
command -v cc >/dev/null 2>&1 || missing+=(build-essential)  # ring, and cargo-deb's liblzma, build C
if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}"
fi
# Version 3 (the one this was written against: units in /usr/lib/systemd/system, .ddeb).
if ! cargo deb --version >/dev/null 2>&1; then
    echo "installing cargo-deb (cargo install cargo-deb --locked --version ^3.8)"
    cargo install cargo-deb --locked --version '^3.8'
fi
cargo deb --version

step "config/deb/build.sh (generate, cargo deb)"
start=$SECONDS
config/deb/build.sh
echo "the build took $((SECONDS - start)) s"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p; T; q' Cargo.toml)
arch=$(dpkg --print-architecture)
deb="target/debian/click-gateway_${version}-1_${arch}.deb"
ddeb="target/debian/click-gateway-dbgsym_${version}-1_${arch}.ddeb"
[ -f "$deb" ] || fail "no $deb after cargo deb"
[ -f "$ddeb" ] || fail "no $ddeb (debug symbols) after cargo deb"
echo "packages: $deb ($(du -h "$deb" | cut -f1)), $ddeb ($(du -h "$ddeb" | cut -f1))"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step "control fields (dpkg-deb -f)"
field() { dpkg-deb -f "$deb" "$1"; }
dpkg-deb -I "$deb" | sed -n '/^ Package:/,$p'
[ "$(field Package)" = click-gateway ] || fail "Package is '$(field Package)'"
[ "$(field Version)" = "${version}-1" ] || fail "Version is '$(field Version)', not ${version}-1"
[ "$(field Architecture)" = "$arch" ] || fail "Architecture is '$(field Architecture)', not $arch"
[ "$(field Section)" = net ] || fail "Section is '$(field Section)'"
[ "$(field Priority)" = optional ] || fail "Priority is '$(field Priority)'"
grep -Eq '^[^<>]+ <[^<>@ ]+@[^<>@ ]+>$' <<<"$(field Maintainer)" || fail "Maintainer '$(field Maintainer)' is not 'Name <address>'"
grep -Eq '(^|, )adduser(,|$| )' <<<"$(field Depends)" || fail "Depends '$(field Depends)' lacks adduser"
grep -Eq '(^|, )libc6( |,|$)' <<<"$(field Depends)" || fail "Depends '$(field Depends)' lacks libc6"
description=$(field Description)
[[ $description == "Reverse proxy that verifies Click "* ]] || fail "Description: $description"
[ "$(field Installed-Size)" -gt 0 ] || fail "no Installed-Size"

step "files (dpkg-deb -c)"
dpkg-deb -c "$deb" | tee "$work/contents"
# "mode owner/group path" of every regular file, e.g. "-rwxr-xr-x root/root ./usr/bin/click-gateway"
awk '$1 !~ /^d/ { print $1, $2, $6 }' "$work/contents" | sort >"$work/files"
has() {
    grep -qxF -e "$1 0/0 $2" "$work/files" || grep -qxF -e "$1 root/root $2" "$work/files" || fail "the package lacks $2 with mode $1: $(grep -F " $2" "$work/files" || echo absent)"
}
has -rwxr-xr-x ./usr/bin/click-gateway
unit_path=./usr/lib/systemd/system/click-gateway.service   # /lib is /usr/lib on Debian 12
grep -qF " ./lib/systemd/system/click-gateway.service" "$work/files" && unit_path=./lib/systemd/system/click-gateway.service
has -rw-r--r-- "$unit_path"
has -rw-r--r-- ./etc/click-gateway/gateway.toml
has -rw-r----- ./etc/click-gateway/keys.toml
has -rw-r--r-- ./usr/share/doc/click-gateway/copyright
has -rw-r--r-- ./usr/share/doc/click-gateway/README.md
has -rw-r--r-- ./usr/share/doc/click-gateway/examples/alerts.yml
unexpected=$(awk '{ print $3 }' "$work/files" | grep -Ev '^\./(usr/bin/click-gateway|(usr/)?lib/systemd/system/click-gateway\.service|etc/click-gateway/(gateway|keys)\.toml|usr/share/doc/click-gateway/.*)$' || true)
[ -z "$unexpected" ] || fail "unexpected files in the package: $unexpected"

step "conffiles and maintainer scripts (dpkg-deb -I / -e)"
dpkg-deb -e "$deb" "$work/DEBIAN"
ls -l "$work/DEBIAN"
printf '/etc/click-gateway/gateway.toml\n/etc/click-gateway/keys.toml\n' >"$work/want-conffiles"
sort "$work/DEBIAN/conffiles" | diff -u "$work/want-conffiles" - || fail "conffiles differ"
for s in postinst postrm prerm; do
    [ -x "$work/DEBIAN/$s" ] || fail "no executable $s"
    sh -n "$work/DEBIAN/$s" || fail "$s is not valid sh"
    ! grep -q '#DEBHELPER#' "$work/DEBIAN/$s" || fail "$s still has the #DEBHELPER# token"
    # cargo-deb replaces the token wherever it stands: a comment mentioning it breaks the script.
    [ "$(grep -c 'Automatically added by cargo-deb' "$work/DEBIAN/$s")" = "$(grep -c '^# Automatically added by cargo-deb$' "$work/DEBIAN/$s")" ] \
        || fail "$s: cargo-deb's part landed inside a line (a #DEBHELPER# in a comment?)"
done
grep -q 'adduser --quiet --system --group' "$work/DEBIAN/postinst" || fail "postinst does not create the user"
grep -q 'deb-systemd-helper' "$work/DEBIAN/postinst" || fail "postinst lacks cargo-deb's systemd part"
grep -q 'try-restart' "$work/DEBIAN/postinst" || fail "postinst does not try-restart on upgrade"
! grep -q 'deb-systemd-invoke start' "$work/DEBIAN/postinst" || fail "postinst starts the service on install"
grep -q 'deb-systemd-helper debian-installed' "$work/DEBIAN/postinst" || fail "postinst enables the service on install"
grep -q 'deb-systemd-invoke stop' "$work/DEBIAN/prerm" || fail "prerm does not stop the service on removal"
grep -q 'rmdir --ignore-fail-on-non-empty' "$work/DEBIAN/postrm" || fail "postrm does not handle the state directory on purge"

step "debug symbols"
dpkg-deb -c "$ddeb"
[ "$(dpkg-deb -f "$ddeb" Package)" = click-gateway-dbgsym ] || fail "the .ddeb is not click-gateway-dbgsym"
grep -Eq ' \./usr/lib/debug/\.build-id/[0-9a-f]{2}/[0-9a-f]+\.debug$' <<<"$(dpkg-deb -c "$ddeb")" \
    || fail "the .ddeb has no /usr/lib/debug/.build-id/*.debug"

step "packaged unit and configuration"
dpkg-deb -x "$deb" "$work/root"
! grep -q '\.debug_line' <<<"$(readelf -S "$work/root/usr/bin/click-gateway")" \
    || fail "the packaged binary still has its debug sections"
cmp "$work/root/$unit_path" target/deb/click-gateway.service || fail "the packaged unit is not the one config/deb/generate.sh made"
bin="$work/root/usr/bin/click-gateway"
grep -q '^ExecStart=/usr/bin/click-gateway serve --config /etc/click-gateway/gateway.toml$' "$work/root/$unit_path" \
    || fail "the packaged unit does not start /usr/bin/click-gateway with /etc/click-gateway/gateway.toml"
grep -qx 'StateDirectory=click-gateway' "$work/root/$unit_path" || fail "the packaged unit has no StateDirectory=click-gateway"
sed "s#/usr/bin/click-gateway#$bin#g" "$work/root/$unit_path" >"$work/click-gateway.service"
verify=$(systemd-analyze verify "$work/click-gateway.service" 2>&1) || fail "systemd-analyze verify: $verify"
[ -z "$verify" ] || fail "systemd-analyze verify: $verify"
echo "systemd-analyze verify: ok"
# As installed, with no service in keys.toml yet: check refuses (so the unit would not start).
if out=$(CLICK_GATEWAY_CLICK__KEYS_FILE="$work/root/etc/click-gateway/keys.toml" \
    "$bin" check --config "$work/root/etc/click-gateway/gateway.toml" 2>&1); then
    fail "check accepts the packaged keys.toml, which should define no service: $out"
fi
grep -q 'defines no \[services' <<<"$out" || fail "check's complaint about the packaged keys.toml: $out"
echo "unconfigured: check refuses, as intended: $(grep -m1 'defines no' <<<"$out")"
# With a key added (a made-up one), the packaged gateway.toml is valid for this binary.
# (The ledger's directory, /var/lib/click-gateway, exists only once installed: the check uses
# one of its own.)
grep -q '^database = "/var/lib/click-gateway/ledger.db"$' "$work/root/etc/click-gateway/gateway.toml" \
    || fail "the packaged gateway.toml does not record into /var/lib/click-gateway/ledger.db"
mkdir -p "$work/state"
printf '[services.12345]\nsecret_keys = ["made-up-key-for-check-sh"]\n' >"$work/keys.toml"
out=$(CLICK_GATEWAY_CLICK__KEYS_FILE="$work/keys.toml" CLICK_GATEWAY_LEDGER__DATABASE="$work/state/ledger.db" \
    "$bin" check --config "$work/root/etc/click-gateway/gateway.toml" 2>&1) \
    || fail "check rejects the packaged gateway.toml with a key added: $out"
echo "configured: check accepts the packaged gateway.toml"

if ! $install_test; then
    echo
    echo "config/deb/check.sh: package OK ($deb); install test skipped (pass --install)"
    exit 0
fi

step "install test"
[ "$(id -u)" -eq 0 ] || [ -n "$sudo" ] || fail "--install needs root or sudo"
status=$(dpkg-query -W -f '${Status}' click-gateway 2>/dev/null || true)
if [ -n "$status" ] || [ -e /etc/click-gateway ] || [ -e /var/lib/click-gateway ]; then
    echo "click-gateway (package, /etc/click-gateway or /var/lib/click-gateway) is already on this machine: install test skipped"
    exit 0
fi
user_existed=false
getent passwd click-gateway >/dev/null && user_existed=true
cleanup() {
    $sudo dpkg --purge click-gateway >/dev/null 2>&1 || true
    $sudo rm -rf /var/lib/click-gateway
    if ! $user_existed; then
        if getent passwd click-gateway >/dev/null; then
            $sudo deluser --quiet --system click-gateway >/dev/null 2>&1 || true
        fi
        if getent group click-gateway >/dev/null; then
            $sudo delgroup --quiet --system click-gateway >/dev/null 2>&1 || true
        fi
    fi
    rm -rf "$work"
}
trap cleanup EXIT
command -v adduser >/dev/null 2>&1 || apt_install adduser
export DEBIAN_FRONTEND=noninteractive
$sudo dpkg -i "$deb"
mode() { stat -c '%a %U:%G' "$1"; }
expect() { [ "$2" = "$3" ] || fail "$1: '$2', expected '$3'"; }
entry=$(getent passwd click-gateway) || fail "no user click-gateway"
expect "user's home" "$(cut -d: -f6 <<<"$entry")" /var/lib/click-gateway
expect "user's shell" "$(cut -d: -f7 <<<"$entry")" /usr/sbin/nologin
[ "$(cut -d: -f3 <<<"$entry")" -lt 1000 ] || fail "click-gateway is not a system user: $entry"
getent group click-gateway >/dev/null || fail "no group click-gateway"
expect /var/lib/click-gateway "$(mode /var/lib/click-gateway)" "700 click-gateway:click-gateway"
expect /etc/click-gateway/keys.toml "$(mode /etc/click-gateway/keys.toml)" "640 root:click-gateway"
expect /etc/click-gateway/gateway.toml "$(mode /etc/click-gateway/gateway.toml)" "644 root:root"
expect /usr/bin/click-gateway "$(mode /usr/bin/click-gateway)" "755 root:root"
[ ! -e /etc/systemd/system/multi-user.target.wants/click-gateway.service ] || fail "the package enabled the service"
$sudo runuser -u click-gateway -- test -r /etc/click-gateway/keys.toml || fail "click-gateway cannot read keys.toml"
! $sudo runuser -u nobody -- test -r /etc/click-gateway/keys.toml || fail "nobody can read keys.toml"
verify=$(systemd-analyze verify /usr/lib/systemd/system/click-gateway.service 2>&1) || fail "systemd-analyze verify (installed): $verify"
[ -z "$verify" ] || fail "systemd-analyze verify (installed): $verify"
if out=$(/usr/bin/click-gateway check --config /etc/click-gateway/gateway.toml 2>&1); then
    fail "the installed, unconfigured gateway passes check: $out"
fi
echo "installed: user, group, modes, unit ok; unconfigured check refuses"

# Upgrade path (same version): the postinst runs again with the previous version as $2.
$sudo dpkg -i "$deb" >/dev/null
expect "/var/lib/click-gateway after reinstall" "$(mode /var/lib/click-gateway)" "700 click-gateway:click-gateway"
expect "keys.toml after reinstall" "$(mode /etc/click-gateway/keys.toml)" "640 root:click-gateway"

# Purge with something in the state directory (a ledger): kept. Then an empty one: removed.
$sudo touch /var/lib/click-gateway/ledger-placeholder
$sudo dpkg --purge click-gateway
[ ! -e /usr/bin/click-gateway ] || fail "/usr/bin/click-gateway left after purge"
[ ! -e /etc/click-gateway ] || fail "/etc/click-gateway left after purge: $(ls -A /etc/click-gateway)"
[ -e /var/lib/click-gateway/ledger-placeholder ] || fail "purge deleted a non-empty state directory"
$sudo rm /var/lib/click-gateway/ledger-placeholder
$sudo dpkg -i "$deb" >/dev/null
$sudo dpkg --purge click-gateway >/dev/null
[ ! -e /var/lib/click-gateway ] || fail "purge left an empty /var/lib/click-gateway"
getent passwd click-gateway >/dev/null || fail "purge removed the user (it is meant to stay)"
echo "purge: conffiles and binary gone, a non-empty state directory kept, an empty one removed"

echo
echo "config/deb/check.sh: package OK ($deb), install test passed; machine left as found"
