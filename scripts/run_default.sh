#!/usr/bin/env bash
# The main job: the default PruneFuse recipe and a random-selection run at the same budgets, then the
# side-by-side comparison. A run that already finished (or was interrupted) is resumed, not redone.
set -euo pipefail
cd "$(dirname "$0")/.."

RECIPE=${RECIPE:-recipes/fashion-mnist-resnet/prunefuse.yaml}
RUNS=${RUNS:-runs/fashion-mnist-resnet}
CLI=${CLI:-.venv/bin/prunefuse-hf}

run() {
    local output_dir=$1
    shift
    local resume=()
    [ -f "$output_dir/state.json" ] && resume=(--resume)
    "$CLI" run --config "$RECIPE" --output_dir "$output_dir" "${resume[@]}" "$@"
}

echo "== PruneFuse (recipe $RECIPE)"
run "$RUNS/prunefuse"
echo "== Random selection, same model, budgets and training"
run "$RUNS/random" --method random

echo "== Comparison"
"$CLI" compare "PruneFuse=$RUNS/prunefuse" "random=$RUNS/random"
echo
echo "report and plots: $RUNS/prunefuse/report.md, $RUNS/prunefuse/accuracy.png"
echo "fused model:      $RUNS/prunefuse/fused (AutoModelForImageClassification.from_pretrained)"
