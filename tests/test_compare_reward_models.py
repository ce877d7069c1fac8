"""Two reward models on the same held-out pairs: accuracies and paired differences per length stratum, against
hand computation; the script run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llm_pg.data.preferences import PreferencePair
from llm_pg.errors import LlmPgError
from llm_pg.evaluation.preference_accuracy import compare_reward_models, pair_rows

ROOT = Path(__file__).resolve().parents[1]

# Pairs 0-2: the chosen answer is longer; 3-4: shorter; 5: equal lengths (only in "all").
PAIRS = [PreferencePair([{"role": "user", "content": f"q{i}"}], c, r) for i, (c, r) in enumerate(
    [("a long answer", "no"), ("longer one", "x"), ("yes indeed", "nope"), ("ok", "a longer answer"),
     ("no", "maybe so"), ("same", "size")])]
# A ranks every longer-chosen pair and the equal pair right and the shorter-chosen ones wrong; B the other way
# round, with a tie (1/2) on the equal pair.
A = pair_rows([1.0, 2.0, 3.0, 0.0, 0.0, 1.0], [0.0, 1.0, 2.0, 1.0, 1.0, 0.0], PAIRS)
B = pair_rows([0.0, 0.0, 0.0, 1.0, 2.0, 0.5], [1.0, 1.0, 1.0, 0.0, 1.0, 0.5], PAIRS)


def test_accuracies_and_differences_per_stratum_are_the_hand_computed_ones():
    result = compare_reward_models(A, B, resamples=500)
    assert result["pairs"] == 6
    assert result["all"]["a"]["accuracy"] == pytest.approx(4 / 6) and result["all"]["b"]["accuracy"] == 2.5 / 6
    assert result["all"]["a_minus_b"]["difference"] == pytest.approx(1.5 / 6)
    low, high = result["all"]["a_minus_b"]["ci"]
    assert low <= 1.5 / 6 <= high and low < high
    longer, shorter = result["chosen_longer"], result["chosen_shorter"]
    assert (longer["pairs"], longer["a"]["accuracy"], longer["b"]["accuracy"]) == (3, 1.0, 0.0)
    assert (shorter["pairs"], shorter["a"]["accuracy"], shorter["b"]["accuracy"]) == (2, 0.0, 1.0)
    # every pair of a stratum differs by the same amount: each resample's difference is that amount
    assert longer["a_minus_b"]["difference"] == 1.0 and longer["a_minus_b"]["ci"] == [1.0, 1.0]
    assert shorter["a_minus_b"]["difference"] == -1.0 and shorter["a_minus_b"]["ci"] == [-1.0, -1.0]
    # paired sign-flip test, exact with 2^3 = 8 sign patterns: only the all-positive and all-negative ones reach |1|
    assert longer["a_minus_b"]["p_value"] == pytest.approx(2 / 8)


def test_a_model_against_itself_differs_by_nothing():
    result = compare_reward_models(A, A, resamples=200)
    for stratum in ("all", "chosen_longer", "chosen_shorter"):
        assert result[stratum]["a_minus_b"]["difference"] == 0.0 and result[stratum]["a_minus_b"]["ci"] == [0.0, 0.0]


def test_score_files_of_other_pairs_are_refused_in_one_line():
    other = pair_rows([1.0] * 6, [0.0] * 6, PAIRS[::-1])
    with pytest.raises(LlmPgError, match="not of the same held-out pairs"):
        compare_reward_models(A, other)


def test_the_script_prints_the_table_and_writes_json(tmp_path):
    for name, rows in (("covariate", A), ("bt", B)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "eval_scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    script = [sys.executable, str(ROOT / "scripts" / "compare_reward_models.py")]
    done = subprocess.run(script + [str(tmp_path / "covariate"), str(tmp_path / "bt"), "--resamples", "300",
                                    "--json", str(tmp_path / "out.json")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "| chosen answer longer | 3 | 1.000 [" in done.stdout and "| +1.000 [+1.000, +1.000] |" in done.stdout
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["chosen_shorter"]["a_minus_b"]["difference"] == -1.0
    done = subprocess.run(script + [str(tmp_path / "covariate"), str(tmp_path / "missing")], capture_output=True,
                          text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "eval_scores.jsonl not found" in done.stderr
