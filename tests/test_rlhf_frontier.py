"""The gold-vs-KL frontier (rlhf.frontier_steps): the interpolation at matched KL against hand computation, the kept
policies are the runs' policies at those steps, each point is rlhf_statistics.compare of its saved samples, the
setting is an input of rl, dpo and compare, and bad values are refused in one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml
from helpers import assert_one_line_error, pipeline_values, run_cli, write_tiny_pairs
from safetensors.torch import load_file

from llm_pg.config.schema import config_from_dict
from llm_pg.pipelines.rlhf import DONE, stage_inputs
from llm_pg.pipelines.rlhf_frontier import MatchedKL, gain_at_matched_kl
from llm_pg.pipelines.rlhf_statistics import PolicySamples, compare
from test_rlhf import pipeline_run  # noqa: F401  (the finished tiny pipeline, once per module)

DPO = {"max_steps": 4, "batch_size": 4, "learning_rate": 1e-3, "beta": 0.5}
STEPS = [2, 1]  # given unsorted: kept and reported sorted


def test_gain_at_matched_kl_against_hand_computation():
    # a: (0,0) (1,1) (3,2); b: (0,0) (2,-1). Overlap [0, 2]; knots 0, 1, 2 (3 is outside).
    # a(1) = 1, a(2) = 1 + (2 - 1) / 2 = 1.5; b(1) = -0.5, b(2) = -1 -> D = 0, 1.5, 2.5;
    # mean = ((0 + 1.5) / 2 * 1 + (1.5 + 2.5) / 2 * 1) / 2 = 1.375
    m = gain_at_matched_kl([(0, 0), (1, 1), (3, 2)], [(0, 0), (2, -1)])
    assert m.kl == [0, 1, 2] and m.a == [0, 1, 1.5] and m.b == [0, -0.5, -1]
    assert m.difference == [0, 1.5, 2.5] and m.overlap == (0, 2) and m.mean_difference == pytest.approx(1.375)
    assert gain_at_matched_kl([(1, 1), (2, 2)], [(3, 0), (4, 1)]) == MatchedKL([], [], [], [], None, None)
    # a single point inside the other curve's range: one common KL, the other curve interpolated there
    single = gain_at_matched_kl([(1.5, 5)], [(0, 0), (1, 1), (2, 2)])
    assert (single.kl, single.a, single.b, single.difference) == ([1.5], [5], [1.5], [3.5])
    assert single.overlap == (1.5, 1.5) and single.mean_difference == 3.5
    # equal KLs are merged into their mean gain: (1, 0) and (1, 2) -> (1, 1); a non-monotone run (KL 2 at step 1,
    # KL 1 at step 2) is placed by KL, not by step
    m = gain_at_matched_kl([(0, 0), (2, 2), (1, 0), (1, 2)], [(0, 0), (0.5, 1), (2, 0)])
    # a: 0 -> 0, 1 -> 1, 2 -> 2; b: 0 -> 0, 0.5 -> 1, 2 -> 0, b(1) = 1 - (0.5 / 1.5) = 2/3; a(0.5) = 0.5
    assert m.kl == [0, 0.5, 1, 2] and m.a == pytest.approx([0, 0.5, 1, 2])
    assert m.b == pytest.approx([0, 1, 2 / 3, 0]) and m.difference == pytest.approx([0, -0.5, 1 / 3, 2])
    # trapezoids: 0.5 * (0 - 0.5) / 2 + 0.5 * (-0.5 + 1/3) / 2 + 1 * (1/3 + 2) / 2, over the width 2
    assert m.mean_difference == pytest.approx((-0.125 - 1 / 24 + 7 / 6) / 2)  # = 0.5
    assert gain_at_matched_kl([(0, 0), (0, 4)], [(0, 1)]).difference == [1]  # equal KL, both curves one knot
    with pytest.raises(ValueError, match="at least one"):
        gain_at_matched_kl([], [(0, 0)])


def _samples(path) -> PolicySamples:
    """A policy's saved completions (compare/samples_<name>.jsonl) as the (P, K) arrays compare reads."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    prompts = list(dict.fromkeys(r["id"] for r in rows))
    shape = (len(prompts), len(rows) // len(prompts))
    arrays = {k: np.reshape([r[k] for r in rows], shape) for k in ("proxy", "gold", "tokens")}
    kl = np.reshape([r["kl"] for r in rows], shape) if "kl" in rows[0] else None
    return PolicySamples(arrays["proxy"], arrays["gold"], arrays["tokens"], kl)


@pytest.fixture(scope="module")
def frontier_run(pipeline_run, tmp_path_factory):  # noqa: F811
    """The finished pipeline copied, with the DPO arm and rlhf.frontier_steps: refused first (rl was done without
    it), then rl/ deleted as the refusal says, so rl, dpo and compare run again: (values, folder, refusal, run)."""
    values, out, _ = pipeline_run
    tmp = tmp_path_factory.mktemp("frontier")
    copy = tmp / "run"
    shutil.copytree(out, copy)
    values = {**values, "rlhf": {**values["rlhf"], "output_dir": str(copy), "dpo": True, "frontier_steps": STEPS},
              "dpo": DPO}
    (tmp / "rlhf.yaml").write_text(yaml.safe_dump(values))
    refused = run_cli("rlhf", "--config", tmp / "rlhf.yaml", cwd=tmp)
    shutil.rmtree(copy / "rl")
    done = run_cli("rlhf", "--config", tmp / "rlhf.yaml", cwd=tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    return values, copy, refused, done


def test_frontier_steps_is_an_input_of_rl_dpo_and_compare_only_when_set(pipeline_run, frontier_run):  # noqa: F811
    values, out, _ = pipeline_run
    assert not (out / "rl" / "policies").exists()  # none kept without the setting
    assert "frontier" not in json.loads((out / "comparison.json").read_text())
    plain = config_from_dict(values)
    assert all("rlhf.frontier_steps" not in stage_inputs(s, plain) for s in ("rl", "dpo", "compare"))
    with_steps, copy, refused, _ = frontier_run
    config = config_from_dict(with_steps)
    assert [s for s in ("data", "sft", "rm_proxy", "rm_gold", "rl", "dpo", "compare")
            if "rlhf.frontier_steps" in stage_inputs(s, config)] == ["rl", "dpo", "compare"]
    assert refused.returncode == 2
    assert_one_line_error(refused.stderr, "stage rl in", "was done with other settings (rlhf.frontier_steps: None -> "
                                          "[2, 1])", "delete")
    for stage in ("rl", "dpo", "compare"):
        assert json.loads((copy / stage / DONE).read_text())["inputs"]["rlhf.frontier_steps"] == STEPS


def test_the_kept_policies_are_the_runs_policies_at_those_steps(frontier_run, tmp_path):
    from llm_pg.pipelines.rlhf_configs import dpo_config
    from llm_pg.training.dpo import train_dpo

    values, copy, _, _ = frontier_run
    assert sorted(p.name for p in (copy / "rl" / "policies").iterdir()) == ["step-000001", "step-000002"]
    kept = load_file(copy / "rl" / "policies" / "step-000002" / "model.safetensors")
    checkpoint = load_file(copy / "rl" / "checkpoints" / "step-000002" / "model" / "model.safetensors")
    assert kept.keys() == checkpoint.keys() and all((kept[k] == checkpoint[k]).all() for k in kept)
    # DPO has no checkpoints: the policy kept at step 2 is the final policy of the same run stopped after 2 steps
    config = dpo_config(config_from_dict(values), copy)
    config.dpo.max_steps, config.dpo.output_dir = 2, str(tmp_path / "dpo2")
    stopped = load_file(train_dpo(config) / "model.safetensors")
    kept = load_file(copy / "dpo" / "policies" / "step-000002" / "model.safetensors")
    assert kept.keys() == stopped.keys() and all((kept[k] == stopped[k]).all() for k in kept)
    first = load_file(copy / "dpo" / "policies" / "step-000001" / "model.safetensors")
    assert any((first[k] != kept[k]).any() for k in kept)  # step 1 is another policy


def test_each_point_is_the_comparison_of_its_saved_samples(pipeline_run, frontier_run):  # noqa: F811
    values, copy, _, done = frontier_run
    result = json.loads((copy / "comparison.json").read_text())
    f = result["frontier"]
    assert f["steps"] == [1, 2] and set(f["methods"]) == {"rl", "dpo"}
    sft = _samples(copy / "compare" / "samples_sft.jsonl")
    resamples = values["evaluation"]["bootstrap_resamples"]
    selected = json.loads((copy / "rl" / "final" / "selected.json").read_text())
    for method, final_step in (("rl", selected["step"]), ("dpo", DPO["max_steps"])):
        points = f["methods"][method]["points"]
        assert [(p["policy"], p["step"]) for p in points] == [("sft", 0), ("step 1", 1), ("step 2", 2),
                                                              ("final", final_step)]
        assert points[0]["kl_to_sft"] == 0 and points[0]["gold_gain"] == 0
        assert f["methods"][method]["missing_steps"] == []
        for p in points[1:]:
            name = method if p["policy"] == "final" else f"{method}_step{p['step']}"
            policy = _samples(copy / "compare" / f"samples_{name}.jsonl")
            r = compare(sft, policy, resamples)
            assert p["gold_gain"] == pytest.approx(r["gold"]["gain"]) and p["gold_gain_ci"] == r["gold"]["gain_ci"]
            assert p["kl_to_sft"] == pytest.approx(float(policy.kl.mean())) and p["kl_to_sft"] != 0
            assert p["gold_gain_matched_length"]["value"] == r["gold"]["matched_length"]["regression"]["value"]
            assert p["length"] == pytest.approx(float(policy.lengths.mean()))
            assert p["proxy_gain"] == pytest.approx(r["proxy"]["gain"])
    # the final points are the comparison's own numbers of the final policies
    assert f["methods"]["rl"]["points"][-1]["gold_gain"] == result["gold"]["gain"]
    assert f["methods"]["dpo"]["points"][-1]["kl_to_sft"] == result["dpo_vs_sft"]["kl_to_sft"]
    if selected["step"] == 2:  # rl/final is the best validation policy of step 2: the same policy, the same point
        rl = f["methods"]["rl"]["points"]
        assert {k: v for k, v in rl[2].items() if k != "policy"} == {k: v for k, v in rl[3].items() if k != "policy"}
    matched = f["rl_vs_dpo"]["gold_gain"]
    curve = {m: [(p["kl_to_sft"], p["gold_gain"]) for p in f["methods"][m]["points"]] for m in ("rl", "dpo")}
    m = gain_at_matched_kl(curve["rl"], curve["dpo"])
    interval = {k: matched.pop(k) for k in ("mean_rl_minus_dpo_ci", "mean_rl_minus_dpo_p_value", "resamples_used")}
    assert matched == {"kl": m.kl, "rl": m.a, "dpo": m.b, "rl_minus_dpo": m.difference, "overlap": list(m.overlap),
                       "mean_rl_minus_dpo": m.mean_difference}
    low, high = interval["mean_rl_minus_dpo_ci"]
    assert low <= m.mean_difference <= high and interval["resamples_used"] == resamples
    assert "gold_gain_matched_length" in f["rl_vs_dpo"] and "mean_rl_minus_dpo_ci" not in \
        f["rl_vs_dpo"]["gold_gain_matched_length"]
    assert len(matched["kl"]) >= 1 and matched["kl"][0] == 0  # SFT: both curves start at (0, 0)

    # RL's comparison with SFT and the final policies' quality: as without the frontier (RL redone to the same
    # policy; the kept policies are sampled after the final ones and judged by nothing else)
    before = json.loads((pipeline_run[1] / "comparison.json").read_text())
    assert {k: result[k] for k in before if k != "quality"} == {k: v for k, v in before.items() if k != "quality"}
    assert set(result["quality"]["policies"]) == {"sft", "rl", "dpo"}
    report = (copy / "report.md").read_text()
    assert "## Gold gain against KL to SFT: the frontier" in report and "| KL to SFT | RL gold gain |" in report
    assert f"| RL | step 2 | 2 | {f['methods']['rl']['points'][2]['kl_to_sft']:.3f} |" in report
    assert "frontier: RL 4 points" in done.stdout and "DPO 4 points" in done.stdout


@pytest.mark.parametrize("overrides, message", [
    (["rlhf.frontier_steps=[0]"], "rlhf.frontier_steps: 0 is not a step"),
    (["rlhf.frontier_steps=[2, 5]"], "rlhf.frontier_steps: step 5 is beyond training.max_steps=4"),
    (["rlhf.dpo=true", "dpo.max_steps=2", "rlhf.frontier_steps=[3]"],
     "rlhf.frontier_steps: step 3 is beyond dpo.max_steps=2"),
    (["rlhf.frontier_steps=[one]"], "rlhf.frontier_steps[0]: expected int"),
    (["model.lora.r=4", "model.lora.merge_on_save=true", "rlhf.frontier_steps=[2]"],
     "rlhf.frontier_steps: the policies at those steps are kept as whole models"),
])
def test_bad_frontier_steps_are_one_line(tiny_model_dir, tmp_path, overrides, message):
    values = pipeline_values(tmp_path, write_tiny_pairs(tmp_path / "pairs"), tmp_path / "run", model=tiny_model_dir)
    (tmp_path / "rlhf.yaml").write_text(yaml.safe_dump(values))
    done = run_cli("rlhf", "--config", tmp_path / "rlhf.yaml", *overrides, cwd=tmp_path)
    assert done.returncode == 2
    assert_one_line_error(done.stderr, message)
    assert not (tmp_path / "run").exists()


def test_frontier_of_hand_made_samples():
    """frontier() on two prompts x two samples: each point is compare's; RL alone has no RL - DPO; a point without a
    gain at matched length (every completion one length) leaves that curve out, and missing steps are recorded."""
    from llm_pg.pipelines.rlhf_frontier import frontier

    sft = PolicySamples(np.zeros((2, 2)), np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([[2, 4], [4, 2]]))
    near = PolicySamples(np.ones((2, 2)), np.array([[1.0, 1.0], [1.0, 1.0]]), np.array([[2, 4], [4, 2]]),
                         kl=np.array([[0.5, 0.5], [0.5, 0.5]]))  # gold gain 0.5 at KL 0.5
    far = PolicySamples(np.ones((2, 2)), np.array([[2.0, 2.0], [2.0, 2.0]]), np.full((2, 2), 3),
                        kl=np.array([[1.0, 3.0], [2.0, 2.0]]))  # gold gain 1.5 at KL 2
    alone = frontier(sft, {"rl": {"step 1": (1, near), "final": (2, far)}}, [1, 3], {"rl": [3]}, 50)
    points = alone["methods"]["rl"]["points"]
    assert [(p["policy"], p["step"], p["kl_to_sft"], p["gold_gain"]) for p in points] == [
        ("sft", 0, 0.0, 0.0), ("step 1", 1, 0.5, 0.5), ("final", 2, 2.0, 1.5)]
    assert points[1]["gold_gain_ci"] == compare(sft, near, 50)["gold"]["gain_ci"] and points[2]["length"] == 3
    assert alone["methods"]["rl"]["missing_steps"] == [3] and "rl_vs_dpo" not in alone
    both = frontier(sft, {"rl": {"final": (2, far)}, "dpo": {"final": (4, near)}}, [], {}, 50)["rl_vs_dpo"]
    # RL: (0, 0) (2, 1.5); DPO: (0, 0) (0.5, 0.5). Overlap [0, 0.5]: RL(0.5) = 0.375 -> RL - DPO = -0.125 there;
    # mean over [0, 0.5] = (0 - 0.125) / 2
    interval = {k: both["gold_gain"].pop(k) for k in ("mean_rl_minus_dpo_ci", "mean_rl_minus_dpo_p_value",
                                                      "resamples_used")}
    assert both["gold_gain"] == {"kl": [0.0, 0.5], "rl": [0.0, 0.375], "dpo": [0.0, 0.5],
                                 "rl_minus_dpo": [0.0, -0.125], "overlap": [0.0, 0.5], "mean_rl_minus_dpo": -0.0625}
    # every prompt of near and far has the same per-prompt gain and KL: every resample gives the same mean
    assert interval == {"mean_rl_minus_dpo_ci": [-0.0625, -0.0625], "mean_rl_minus_dpo_p_value": pytest.approx(2 / 51),
                        "resamples_used": 50}
    # far's completions all have 3 tokens and SFT's 2 or 4: the regression still fits; with one length for all, none
    flat = PolicySamples(sft.proxy, sft.gold, np.full((2, 2), 3))
    one_length = frontier(flat, {"rl": {"final": (2, far)}, "dpo": {"final": (4, far)}}, [], {}, 50)["rl_vs_dpo"]
    assert one_length["gold_gain_matched_length"] is None and one_length["gold_gain"]["rl_minus_dpo"] == [0.0, 0.0]


def test_the_interval_of_the_mean_difference_against_a_slow_loop():
    """mean_difference_interval: per resample, the prompts drawn, each point's KL and gain recomputed by loops, the mean
    of RL - DPO over that resample's overlap; then the interval centred on the observed mean."""
    from llm_pg.evaluation.bootstrap import interval_and_p_value, resample_indices
    from llm_pg.pipelines.rlhf_frontier import mean_difference_interval

    rng = np.random.default_rng(0)
    P, K = 7, 3

    def policy(shift):
        return PolicySamples(rng.normal(size=(P, K)), rng.normal(shift, 1, size=(P, K)), rng.integers(2, 9, (P, K)),
                             kl=rng.gamma(2.0, shift + 0.5, size=(P, K)))

    sft = PolicySamples(rng.normal(size=(P, K)), rng.normal(size=(P, K)), rng.integers(2, 9, (P, K)))
    rl, dpo = [policy(0.5), policy(1.5)], [policy(0.2), policy(0.8), policy(2.0)]

    def points(policies, prompts):
        return [(0.0, 0.0)] + [(np.mean([p.kl[i].mean() for i in prompts]),
                                np.mean([p.gold[i].mean() - sft.gold[i].mean() for i in prompts])) for p in policies]

    everything = list(range(P))
    observed = gain_at_matched_kl(points(rl, everything), points(dpo, everything)).mean_difference
    slow = np.array([gain_at_matched_kl(points(rl, row), points(dpo, row)).mean_difference
                     for row in resample_indices(P, 40)])
    low, high, p = interval_and_p_value(slow - slow.mean() + observed)
    result = mean_difference_interval(sft, rl, dpo, observed, 40)
    assert result["mean_rl_minus_dpo_ci"] == pytest.approx([low, high]) and result["resamples_used"] == 40
    assert result["mean_rl_minus_dpo_p_value"] == pytest.approx(p) and low < observed < high


def test_with_choose_the_frontier_is_the_chosen_candidates_policies(frontier_run, tmp_path):
    """rlhf.choose and rlhf.frontier_steps together: every candidate keeps its policies, and rl/policies holds the
    chosen candidate's, bit for bit (the compare stage's RL frontier is the policy shipped as rl/final)."""
    from llm_pg.pipelines.rlhf import run_stage

    values, out, _, _ = frontier_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "rl")
    choose = {"as_configured": [], "kl_high": ["kl.coef=0.5"]}
    values = {**values, "rlhf": {**values["rlhf"], "output_dir": str(copy), "choose": choose}}
    summary = run_stage("rl", config_from_dict(values), copy, resume=False)
    chosen = copy / "rl" / "candidates" / summary["chosen"]
    for name in choose:
        kept = sorted(p.name for p in (copy / "rl" / "candidates" / name / "policies").iterdir())
        assert kept == ["step-000001", "step-000002"], name
    assert sorted(p.name for p in (copy / "rl" / "policies").iterdir()) == ["step-000001", "step-000002"]
    for step in ("step-000001", "step-000002"):
        shipped = load_file(copy / "rl" / "policies" / step / "model.safetensors")
        own = load_file(chosen / "policies" / step / "model.safetensors")
        assert shipped.keys() == own.keys() and all((shipped[k] == own[k]).all() for k in own)
    other = next(n for n in choose if n != summary["chosen"])
    theirs = load_file(copy / "rl" / "candidates" / other / "policies" / "step-000002" / "model.safetensors")
    shipped = load_file(copy / "rl" / "policies" / "step-000002" / "model.safetensors")
    assert any((theirs[k] != shipped[k]).any() for k in shipped)  # the candidates' policies differ
