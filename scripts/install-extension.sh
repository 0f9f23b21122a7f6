#!/usr/bin/env bash
# Builds gp_recovery and installs it into the Debian PostgreSQL 15 dirs,
# builds the gpdemo tool, and puts the DBA commands gprecoverseg and gpstate
# into /usr/local/bin.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
SUDO=()
if [ "$(id -u)" != 0 ]; then SUDO=(--sudo); fi
cargo pgrx install --pg-config /usr/lib/postgresql/15/bin/pg_config "${SUDO[@]}" 2>&1 \
    | grep -vE '^\s+(Compiling|Checking)|^\s*$' || true
test -f /usr/share/postgresql/15/extension/gp_recovery.control \
    || { echo "install-extension: gp_recovery was not installed" >&2; exit 1; }
# pg_test runs the commands from the target directory; the DBA runs the same
# binaries from the PATH.
cargo build -q -p gpdemo -p gp_recovery_tools
BIN="${CARGO_TARGET_DIR:-target}/debug"
AS_ROOT=()
if [ "$(id -u)" != 0 ]; then AS_ROOT=(sudo); fi
"${AS_ROOT[@]}" install -m 0755 "$BIN/gprecoverseg" "$BIN/gpstate" "$BIN/gpinitstandby" "$BIN/gpactivatestandby" /usr/local/bin/
