#!/usr/bin/env bash
# Builds gp_recovery and installs it into the Debian PostgreSQL 15 dirs,
# and builds the gpdemo tool.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
SUDO=()
if [ "$(id -u)" != 0 ]; then SUDO=(--sudo); fi
cargo pgrx install --pg-config /usr/lib/postgresql/15/bin/pg_config "${SUDO[@]}" 2>&1 \
    | grep -vE '^\s+(Compiling|Checking)|^\s*$' || true
test -f /usr/share/postgresql/15/extension/gp_recovery.control \
    || { echo "install-extension: gp_recovery was not installed" >&2; exit 1; }
cargo build -q -p gpdemo
