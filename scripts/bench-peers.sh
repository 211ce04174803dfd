#!/usr/bin/env bash
# The peer benchmark suite of issue 5, in one command.
#
#   scripts/bench-peers.sh                 # quick: the whole suite in ~1-2 minutes after the build
#   PEERS_HEAVY=1 scripts/bench-peers.sh   # heavier: larger runs, 7 repetitions, 1,000,000 idle actors
#   scripts/bench-peers.sh latency timers  # only some sections:
#                                          #   throughput actors latency routed memory timers
#
# It builds benches/peers (its own cargo workspace, so crossbeam, flume, tokio, actix,
# ractor, kameo and the 1.x reference never enter the library's dependency tree or CI;
# the first build pulls ~350 crates and takes ~5-10 minutes) in release, runs it, and
# writes benches/peers/results/{results.json,results.md,chart.svg}.
# PEERS_RESULTS_DIR=<dir> writes the results elsewhere. On a busy machine, run twice.
#
# Profiling one case: benches/peers/target/release/peers --one <case> <n>, e.g.
#   valgrind --tool=callgrind benches/peers/target/release/peers --one spsc-ours 200000
# (cases: spsc-ours 2p-ours spsc-crossbeam 2p-crossbeam cast-ours cast-ours-2p
#  cast-by-pid-ours cast-by-pid-ours-2p routed-ours pre-resolved-ours call-sync-ours
#  call-sync-crossbeam call-async-ours call-async-ours-direct call-async-tokio
#  call-async-tokio-timeout)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root/benches/peers"
cargo build --release --locked 2>/dev/null || cargo build --release
exec ./target/release/peers "$@"
