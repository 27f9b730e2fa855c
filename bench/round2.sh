#!/usr/bin/env bash
# Issue 21's tables on one idle machine: export time and peak memory, then ours (ExecuTorch's C++ runtime
# with ExecuTorch's own kernels, `bench`'s default) against llama.cpp's own llama-bench on Q4_0 of the same
# weights, at short and long prompts. Every figure is from this run; ratios are ours / llama.cpp's.
#
#   bench/round2.sh [OUT]          # default OUT=/tmp/round2; needs `llama-mobile peer build` once
#   MODELS="smollm2 1b" LENGTHS_1B=32,512,1024 RUNS=2 bench/round2.sh
#
# Llama 3.2 1B is random weights in the real shapes (bench/write_random_checkpoint.py): speed and memory
# do not depend on the values. Run nothing else meanwhile: llama.cpp's threads collapse on a shared core.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/round2}
MODELS=${MODELS:-"smollm2 1b"}
RUNS=${RUNS:-2}
CONTEXT=${CONTEXT:-4224}  # 4,096 prompt tokens + 64 new ones, and room
LENGTHS_SMOLLM2=${LENGTHS_SMOLLM2:-32,128,512,1024,2048,4096}
LENGTHS_1B=${LENGTHS_1B:-32,128,512,1024}
CLI=.venv/bin/llama-mobile
mkdir -p "$OUT"

export_timed() {  # NAME ARGS...: the export's own seconds and peak RSS in OUT/NAME.export.json
  local name=$1; shift
  echo "== export $name: $*" >&2
  "$CLI" export "$@" -o "$OUT" --name "$name" --json > "$OUT/$name.export.json"
}

for model in $MODELS; do
  case $model in
    smollm2)
      export_timed smollm2 --context "$CONTEXT"
      lengths=$LENGTHS_SMOLLM2 ;;
    1b)
      checkpoint=$OUT/ck/Llama3.2-1B
      [ -f "$checkpoint/params.json" ] || .venv/bin/python bench/write_random_checkpoint.py llama3.2-1b "$checkpoint"
      export_timed 1b --model llama3.2-1b --checkpoint "$checkpoint" --context "$CONTEXT" --no-validate
      lengths=$LENGTHS_1B ;;
    *) echo "unknown model $model" >&2; exit 2 ;;
  esac
  echo "== bench $model at $lengths" >&2
  "$CLI" bench "$OUT/$model" --vs-llama-cpp --prompt-lengths "$lengths" --new-tokens 64 --runs "$RUNS" \
    --json > "$OUT/$model.bench.json"
done
echo "results in $OUT" >&2
