#!/usr/bin/env bash
# Optional, slow: the loom models at preemption bound 3 (about 10x the iterations of the
# bound 2 that `.ci/run` uses). Not part of CI. Usage: bash .ci/loom-heavy.sh [test filter]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
t0=$SECONDS
RUSTFLAGS="--cfg loom" \
    CARGO_TARGET_DIR=target/loom \
    LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}" \
    LOOM_MAX_DURATION="${LOOM_MAX_DURATION:-1800}" \
    cargo test --profile loom --no-default-features --test loom -- --nocapture "$@"
echo "==> loom-heavy (preemptions ${LOOM_MAX_PREEMPTIONS:-3}): ok in $((SECONDS - t0))s"
