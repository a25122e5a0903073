#!/usr/bin/env bash
# The fast CI configuration of the embedded suite: every variant on tiny data with the
# CPU accounting, whose figures are byte-exact on the pinned versions (constraints.txt).
#
#   CI:       scripts/memory_check.sh "$(mktemp -d)/current"   (runs, then compares)
#   refresh:  rm -r results/baselines/vl-retrieval-ci && scripts/memory_check.sh --refresh
#
# A refresh is for an intended change: commit the new records with a message saying why
# the figures moved.
set -euo pipefail
cd "$(dirname "$0")/.."
# Every run computes with one intra-op thread (the default, --threads-per-run 1), whatever
# the machine has, as the baseline did: rSum depends on the thread count (the reduction
# order), and compare refuses a metric comparison across thread counts. As many runs at once
# as there are cores (the default --jobs); the records do not depend on it.
# Across CPUs of another kind (another instruction set for the same kernels) a retrieval rank
# may still flip for the lowest-scoring variant: the tolerance allows one (one image-to-text
# hit of 32 test images is 3.125 points, 3.0% of bitfit's 103.75).
METRIC_TOLERANCE=0.035
BASELINE=results/baselines/vl-retrieval-ci
if [ "${1:-}" = "--refresh" ]; then out=$BASELINE; else out=${1:?usage: memory_check.sh OUTPUT_DIR | --refresh}; fi

petlbench run --suite vl-retrieval --variants all --device cpu --threads-per-run 1 --output "$out" \
  --set data.train_images=64 --set data.val_images=16 --set data.test_images=32 \
  --set train.batch_size=16 --set train.steps=4 --set train.warmup_steps=1 --set train.measure_steps=2

if [ "$out" != "$BASELINE" ]; then
  petlbench compare "$BASELINE" "$out" --tolerance 0 --metric-tolerance "$METRIC_TOLERANCE"
fi
