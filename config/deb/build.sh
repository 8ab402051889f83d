#!/usr/bin/env bash
# Builds the Debian package: the packaged unit and configuration derived from config/
# (config/deb/generate.sh, into target/deb/), then `cargo deb` (a release build). Arguments go
# to cargo deb. The package lands in target/debian/.
set -euo pipefail
cd "$(dirname "$0")/../.."
config/deb/generate.sh
cargo deb "$@"
