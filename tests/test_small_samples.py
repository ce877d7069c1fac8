"""Statistics valid at every sample size (issue 24): every interval stays inside the range its quantity can take,
no p-value is smaller than the sample size allows, and a comparison of too few prompts or pairs says so.

References: Wilson's interval against Newcombe (1998, Table I) and a brute-force inversion of the score test; the
sign test against the binomial computed by hand; the randomization test against a full enumeration (the corpus
BLEU case is in tests/test_eval_metrics.py)."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import yaml
from helpers import run_cli, tiny_config_dict, write_tiny_pairs

from llm_pg.evaluation.bootstrap import (MIN_UNITS, compare_generations, sign_flip_p_value, sign_test_p_value, too_few,
                              wilson_interval)
from llm_pg.evaluation.metrics import Generation, difference_range, text_metrics
from llm_pg.data.preferences import PreferencePair
from llm_pg.pipelines.rlhf_statistics import PolicySamples, bootstrap_mean, compare, markdown
from llm_pg.evaluation.preference_accuracy import evaluate_pairs
from llm_pg.reporting.rm_report import write_rm_report


# ------------------------------------------------------------------------------------------ the building blocks


@pytest.mark.parametrize("k, n, low, high", [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605),
                                             (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)])
def test_wilson_interval_equals_newcombes_table(k, n, low, high):
    assert wilson_interval(k, n) == pytest.approx((low, high), abs=5e-5)


@pytest.mark.parametrize("k, n", [(0, 1), (1, 1), (1, 4), (3, 10), (2.5, 5)])
def test_wilson_interval_is_the_set_of_proportions_the_score_test_keeps(k, n):
    """[low, high] = {p0 : |k/n - p0| <= z sqrt(p0 (1 - p0) / n)}, found here by a grid search."""
    z = 1.959963984540054
    grid = np.linspace(0, 1, 200001)
    kept = grid[np.abs(k / n - grid) <= z * np.sqrt(grid * (1 - grid) / n) + 1e-15]
    low, high = wilson_interval(k, n)
    assert (low, high) == pytest.approx((kept.min(), kept.max()), abs=1e-5)
    assert 0 <= low < high <= 1  # never of zero width, never outside [0, 1]


def test_sign_test_is_the_exact_binomial_by_hand():
    assert sign_test_p_value(6, 0) == pytest.approx(2 / 2 ** 6)  # the smallest p six pairs allow
    assert sign_test_p_value(0, 1) == 1.0 and sign_test_p_value(0, 0) == 1.0 and sign_test_p_value(5, 5) == 1.0
    assert sign_test_p_value(8, 2) == pytest.approx(2 * (1 + 10 + 45) / 2 ** 10)
    assert sign_test_p_value(2, 8) == sign_test_p_value(8, 2)
    big = sign_test_p_value(700, 300)  # no overflow with thousands of pairs
    assert 0 < big < 1e-30


def test_sign_flip_test_is_exact_for_few_units_and_never_below_what_n_allows():
    d = np.array([0.3, -0.1, 0.2, 0.4])
    observed = abs(d.mean())
    flips = [abs(np.dot(s, d) / 4) for s in itertools.product((1, -1), repeat=4)]
    assert sign_flip_p_value(d, 1000) == pytest.approx(sum(f >= observed - 1e-12 for f in flips) / 16)
    for n in range(1, 14):  # all positive: exact for 2^n <= R, Monte Carlo above, never below 2 / 2^n or 1 / (R + 1)
        p = sign_flip_p_value(np.ones(n), 1000)
        assert p >= max(2 / 2 ** n, 1 / 1001) - 1e-15, (n, p)
    assert sign_flip_p_value(np.zeros(5), 1000) == 1.0


def test_too_few_is_said_below_the_size_where_p_below_005_becomes_possible():
    assert 2 / 2 ** (MIN_UNITS - 1) >= 0.05 > 2 / 2 ** MIN_UNITS  # the threshold is where the exact test can reach
    assert too_few(MIN_UNITS) is None
    assert "only 5 paired prompts: too few to conclude anything" in too_few(5)


# ---------------------------------------------------------------------------------- reward-model accuracy


def _pairs(n):
    return [PreferencePair([{"role": "user", "content": "q"}], "a" * (1 + i % 3), "b" * (1 + (i + 1) % 3))
            for i in range(n)]


def test_one_held_out_pair_is_not_significant_and_its_interval_is_not_a_point(tmp_path):
    """The issue's case: one pair, the reward model wrong on it, was 'accuracy 0.0 [0, 0], p = 0.039'."""
    result = evaluate_pairs([0.0], [1.0], _pairs(1), resamples=1000)
    assert result["accuracy"] == 0.0
    assert result["ci"] == pytest.approx([0.0, 0.7935], abs=5e-5)  # Wilson, 0 successes in 1
    assert result["p_value"] == 1.0
    assert "only 1 held-out pairs: too few to conclude anything" in result["warning"]
    for name in ("longer", "shorter"):
        lo, hi = result[f"vs_{name}"]["ci"]
        assert -1.0 <= lo <= hi <= 1.0 and result[f"vs_{name}"]["p_value"] >= 1.0
    report = write_rm_report(tmp_path, result).read_text()
    assert "Too few pairs" in report and "Wilson score interval" in report


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 12])
def test_every_accuracy_interval_stays_in_its_range_and_p_respects_n(n):
    rng = np.random.default_rng(n)
    for _ in range(20):
        rc, rr = rng.integers(0, 3, n).astype(float).tolist(), rng.integers(0, 3, n).astype(float).tolist()
        result = evaluate_pairs(rc, rr, _pairs(n), resamples=500)
        for summary in (result, *result["baselines"].values()):
            assert 0.0 <= summary["ci"][0] <= summary["accuracy"] <= summary["ci"][1] <= 1.0, summary
            assert summary["p_value"] >= min(1.0, 2 / 2 ** n) - 1e-12
        for name in ("longer", "shorter"):
            d = result[f"vs_{name}"]
            assert -1.0 <= d["ci"][0] <= d["ci"][1] <= 1.0, d
            assert d["p_value"] >= min(1.0, 2 / 2 ** n) - 1e-12
        assert (result["warning"] is None) == (n >= MIN_UNITS)


def test_rm_with_one_held_out_pair_from_the_command_line(tiny_model_dir, tmp_path):
    values = {"model": {"name_or_path": str(tiny_model_dir)}, "training": {"num_threads": 1, "seed": 0},
              "rm": {"source": str(write_tiny_pairs(tmp_path / "pairs")), "batch_size": 4, "max_steps": 2,
                     "max_eval_pairs": 1, "output_dir": str(tmp_path / "rm"), "bootstrap_resamples": 200}}
    (tmp_path / "rm.yaml").write_text(yaml.safe_dump(values))
    done = run_cli("rm", "--config", tmp_path / "rm.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    warnings = [line for line in done.stderr.splitlines() if "too few to conclude anything" in line]
    assert len(warnings) == 1 and "only 1 held-out pairs" in warnings[0]
    result = json.loads((tmp_path / "rm" / "eval.json").read_text())
    lo, hi = result["ci"]
    assert result["pairs"] == 1 and 0.0 <= lo < hi <= 1.0 and hi - lo > 0.7 and result["p_value"] == 1.0
    assert "Too few pairs" in (tmp_path / "rm" / "report.md").read_text()
    assert (tmp_path / "rm" / "final" / "model.safetensors").is_file()  # nothing lost: the model is there


# ----------------------------------------------------------------------------------------- eval --compare


def _write_eval(path, completions, references):
    rows = [{"id": f"p{i}", "sample": 0, "prompt": f"prompt {i}", "references": refs, "completion": c,
             "tokens": len(c.split()), "metrics": {**text_metrics(c, refs), "reward": float(len(c) % 3)}}
            for i, (c, refs) in enumerate(zip(completions, references))]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_compare_of_two_prompts_warns_and_keeps_every_interval_in_range(tmp_path):
    refs = [["the cat sat on the mat"], ["a dog ran"]]
    a = _write_eval(tmp_path / "a.jsonl", ["zzz", "a dog ran"], refs)
    b = _write_eval(tmp_path / "b.jsonl", ["the cat sat on the mat", "a dog ran"], refs)
    done = run_cli("eval", "--compare", a, b, "--output", tmp_path / "cmp.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    warnings = [line for line in done.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "only 2 paired prompts: too few to conclude anything" in warnings[0]
    result = json.loads((tmp_path / "cmp.json").read_text())
    assert result["prompts"] == 2 and "too few" in result["warning"]
    for d in result["differences"]:
        low, high = difference_range(d["metric"])
        assert low - 1e-12 <= d["ci_low"] <= d["difference"] <= d["ci_high"] <= high + 1e-12, d
        assert d["p_value"] >= 2 / 2 ** 2, d  # two prompts: the exact test's smallest p is 1/2
    assert "better" not in done.stdout and "worse" not in done.stdout


def test_a_resample_centred_past_the_range_is_cut_to_it():
    """Two prompts, rouge 1 then 0 for B, 0 and 0 for A: the resampled differences are 0, 1/2 and 1, and centring
    them on the observed 1/2 pushes the upper end past 1 unless it is cut."""
    refs = [["x y"], ["x y"]]
    gens = lambda cs: [Generation(f"p{i}", 0, "", r, c, text_metrics(c, r))  # noqa: E731
                       for i, (c, r) in enumerate(zip(cs, refs))]
    for seed in range(30):
        for d in compare_generations(gens(["q", "q"]), gens(["x y", "q"]), 100, seed=seed):
            low, high = difference_range(d.metric)
            assert low <= d.ci_low <= d.ci_high <= high, (seed, d)


# ----------------------------------------------------------------------------------- the RLHF comparison


@pytest.mark.parametrize("prompts", [1, 2, 3, 7])
def test_rlhf_comparison_intervals_stay_in_range_and_warn_with_few_prompts(prompts):
    rng = np.random.default_rng(prompts)
    shape = (prompts, 2)
    sft = PolicySamples(rng.normal(size=shape), rng.normal(size=shape), rng.integers(2, 9, shape))
    rl = PolicySamples(sft.proxy + 1.0, sft.gold + 1.0, rng.integers(2, 9, shape), kl=np.ones(shape))
    result = compare(sft, rl, resamples=300)
    for name in ("gold", "proxy"):
        r = result[name]
        assert r["win_rate"] == 1.0 and 0.0 <= r["win_rate_ci"][0] <= r["win_rate_ci"][1] <= 1.0
        assert r["gain_p_value"] >= max(2 / 2 ** prompts, 1 / 301) - 1e-12
        assert r["win_rate_p_value"] >= max(2 / 2 ** prompts, 1 / 301) - 1e-12
    assert (result["warning"] is not None) == (prompts < MIN_UNITS)
    assert ("Too few test prompts" in markdown(result)) == (prompts < MIN_UNITS)


def test_bootstrap_mean_of_one_prompt_is_not_significant():
    one = bootstrap_mean(np.array([0.9]), 1000, null=0.5, bounds=(0.0, 1.0))
    assert one["p_value"] == 1.0 and 0.0 <= one["ci"][0] <= one["ci"][1] <= 1.0
    assert math.isclose(bootstrap_mean(np.array([1.0, 1.0]), 1000, null=0.5)["p_value"], 0.5)


# ------------------------------------------------------------------------------------------ the run report


def test_report_of_a_run_with_two_test_prompts_says_too_few(tiny_model_dir, tiny_data_file, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(tiny_config_dict(tiny_model_dir, tiny_data_file, run)))
    refs = [["the cat sat on the mat"], ["a dog ran"]]
    for name, completions in (("eval_before", ["zzz", "qq"]), ("eval_after", ["the cat sat on the mat", "a dog"])):
        _write_eval(run / f"{name}.jsonl", completions, refs)
        gens = [Generation(f"p{i}", 0, "", r, c, text_metrics(c, r)) for i, (c, r) in enumerate(zip(completions, refs))]
        from llm_pg.evaluation.heldout import summarize

        (run / f"{name}.json").write_text(json.dumps({"scores": summarize(gens), "settings": {"num_prompts": 2}}))
    done = run_cli("report", run, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    text = (run / "report.md").read_text()
    assert "Too few test prompts" in text and "only 2 paired prompts" in text
    assert "**+" not in text  # no change is marked significant from two prompts
