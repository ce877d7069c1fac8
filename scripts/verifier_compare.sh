#!/usr/bin/env bash
set -euo pipefail
P='(?i)final answer is:?\\s*\\$?(-?\\d[\\d.,/]*)'
FORMAT_ONLY="reward.components=[{name: strict, type: verifier, extract: regex, pattern: \"$P\", require_format: true, weight: 0.0}, {name: lenient, type: verifier, extract: regex, pattern: \"$P\", require_format: false, weight: 0.0}, {name: format, type: format, extract: regex, pattern: \"$P\", weight: 1.0}]"
.venv/bin/python -m llm_pg compare --config configs/arithmetic_verifier.yaml --output-dir "${1:-runs/verifier_compare}" \
    --seeds ${SEEDS:-0} --controls shuffled_reward --arm format_only "$FORMAT_ONLY"
