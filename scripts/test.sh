#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine, then runs every
# test. Safe to run again: installed pieces are reused.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v curl >/dev/null || need_apt+=(curl)
[ -x /usr/sbin/nginx ] || need_apt+=(nginx)
command -v gzip >/dev/null || need_apt+=(gzip)
# The nginx test makes a throwaway TLS certificate.
command -v openssl >/dev/null || need_apt+=(openssl)
# promtool and a real Prometheus server, for the exposition tests.
command -v promtool >/dev/null && command -v prometheus >/dev/null || need_apt+=(prometheus)
python3 -m venv --help >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
    # Debian starts a package's service on install (nginx on port 80 of
    # every interface); the tests start their own instances on loopback,
    # so a temporary policy forbids that, unless the machine has one.
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
        $SUDO chmod +x "$policy"
        trap '$SUDO rm -f "$policy"' EXIT
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
    if [ -n "$(trap -p EXIT)" ]; then
        $SUDO rm -f "$policy"
        trap - EXIT
    fi
fi

# The Python WebSocket client the tests drive the server with, in a venv of
# the project's own so nothing system-wide changes.
venv=.venv
if ! "$venv/bin/python" -c 'import websockets' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/python/requirements.txt
fi
export METRICAST_TEST_PYTHON="$PWD/$venv/bin/python"

# One closing line for every test binary together: with --all-targets the
# last lines cargo prints come from the benchmarks, which only say they
# were skipped.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --all-targets "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) {
        if ($(i + 1) ~ /^passed;?$/) p += $i
        if ($(i + 1) ~ /^failed;?$/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
