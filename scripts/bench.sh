#!/usr/bin/env bash
# Runs the benchmarks: `micro` (hot paths: time and heap allocations per
# operation) and `load` (wrk HTTP runs and WebSocket fan-out against the
# release server, everything on loopback; see benches/load.rs).
#
#   scripts/bench.sh                        # the full set, about 3 minutes
#   scripts/bench.sh --scenarios ws --clients 200 --rate 500 --duration 2
#   scripts/bench.sh --url http://127.0.0.1:18080 --pid 1234 --label peer
#   SKIP_MICRO=1 scripts/bench.sh ...       # load only
#
# Arguments go to the load benchmark (`--help` lists them). Installs wrk
# with apt-get when it is missing (as root, or with sudo); without wrk the
# HTTP scenarios are skipped. Run it on an otherwise quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v wrk >/dev/null; then
    if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
    if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq wrk; }; then
        echo "bench.sh: could not install wrk; the HTTP scenarios will be skipped" >&2
    fi
fi

# Every dashboard costs a descriptor in the load tool and in the server
# (which inherits this limit). Root may raise the hard limit too.
ulimit -n 25000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "bench.sh: open file limit $(ulimit -n)" >&2

cargo build --release
if [ "${SKIP_MICRO:-0}" != 1 ]; then
    cargo bench --bench micro
fi
cargo bench --bench load -- --bench "$@"
