#!/usr/bin/env bash
# The GPU acceptance run (scripts/gpu_acceptance.py says what it checks): one command,
# offline, at most five minutes on one H100/H200, the project run from this checkout
# (PYTHONPATH, no pip).
#
#   scripts/gpu_acceptance.sh OUT [--device cpu] [--methods a,b] [...]
#
# OUT/acceptance.json holds each step's checks as soon as the step ends, OUT/log.txt this
# output, OUT/logs/ each command's own, OUT/fixtures/ the measured CUDA memory figures
# (copy them into tests/fixtures/ and commit them), OUT/e2e and OUT/oom the result records.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/gpu_acceptance.sh OUT [options of scripts/gpu_acceptance.py]}
shift
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python scripts/gpu_acceptance.py --output "$out" "$@" 2>&1 | tee "$out/log.txt"
exit "${PIPESTATUS[0]}"
