"""`llm-pg rlhf`: the whole pipeline on tiny models (every stage, skipped when done, resumed when interrupted), the
disjoint halves of the pairs, the final comparison against hand computation, and the weight-0 gold reward that
leaves training bit-identical."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import assert_one_line_error, pipeline_values, run_cli, tiny_config, write_tiny_pairs
from safetensors.torch import load_file

from llm_pg.config.schema import config_from_dict
from llm_pg.errors import ConfigError
from llm_pg.pipelines.rlhf import DONE, run_pipeline, stages
from llm_pg.pipelines.rlhf_statistics import PolicySamples, bootstrap_mean, compare, length_slope, markdown, wins
from llm_pg.pipelines.rlhf_data import split_pairs
from test_run_folder import snapshot


def folder_digest(folder) -> dict[str, str]:
    """md5 of every file under folder (the lock file aside): what 'changes nothing' compares."""
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".llm_pg.lock"}


@pytest.fixture(scope="module")
def pipeline_run(tiny_model_dir, tmp_path_factory):
    """The tiny pipeline through the CLI, once: (config values, output folder, first run's stdout)."""
    tmp = tmp_path_factory.mktemp("rlhf")
    values = pipeline_values(tmp, write_tiny_pairs(tmp / "pairs"), tmp / "run", model=tiny_model_dir)
    (tmp / "rlhf.yaml").write_text(yaml.safe_dump(values))
    done = run_cli("rlhf", "--config", tmp / "rlhf.yaml", cwd=tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    return values, tmp / "run", done


def test_pipeline_runs_every_stage_and_a_second_run_changes_nothing(pipeline_run):
    values, out, done = pipeline_run
    active = stages(config_from_dict(values))
    assert "dpo" not in active and not (out / "dpo").exists()  # rlhf.dpo is off by default
    for stage in active:
        assert (out / stage / DONE).is_file(), stage
    for folder in ("sft/final", "rm_proxy/final", "rm_gold/final", "rl/final"):
        assert (out / folder / "config.json").is_file(), folder
    result = json.loads((out / "comparison.json").read_text())
    assert result["prompts"] == 6 and result["samples_per_prompt"] == 2
    numbers = [result["kl_to_sft"], *result["length"].values()] + [
        result[rm][k] for rm in ("gold", "proxy") for k in ("sft_mean", "rl_mean", "gain", "win_rate")]
    assert all(math.isfinite(x) for x in numbers)
    assert result["kl_to_sft"] != 0  # RL moved away from the SFT policy
    rl = [json.loads(line) for line in (out / "compare" / "samples_rl.jsonl").read_text().splitlines()]
    assert np.mean([r["gold"] for r in rl]) == pytest.approx(result["gold"]["rl_mean"])
    assert np.mean([r["kl"] for r in rl]) == pytest.approx(result["kl_to_sft"])
    metrics = [json.loads(line) for line in (out / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert all("reward/proxy" in m and "reward/gold" in m for m in metrics if "reward/mean" in m)
    assert any("eval/reward_gold" in m for m in metrics)  # the gold score on the validation prompts, logged
    for m in (m for m in metrics if "reward/mean" in m):  # gold at weight 0: the reward is the proxy alone
        assert m["reward/mean"] == pytest.approx(m["reward/proxy"], abs=1e-6)
    start = json.loads((out / "compare" / "validation_start.json").read_text())  # step 0 of the curve: SFT
    assert set(start) == {"eval/reward_proxy", "eval/reward_gold"} and all(map(math.isfinite, start.values()))
    report = (out / "report.md").read_text()
    assert "![proxy vs gold](plots/proxy_vs_gold.png)" in report and "win rate" in report
    assert (out / "plots" / "proxy_vs_gold.png").stat().st_size > 1000
    assert "gold reward model: RL - SFT" in done.stdout

    before = folder_digest(out)
    again = run_cli("rlhf", "--config", out.parent / "rlhf.yaml", cwd=out.parent)
    assert again.returncode == 0, again.stderr[-3000:]
    assert sum(f"stage {s} is done" in again.stderr for s in active) == len(active)
    assert folder_digest(out) == before


def test_the_reward_models_train_on_disjoint_halves_that_cover_the_pairs(pipeline_run):
    values, out, _ = pipeline_run
    train = [json.loads(line) for line in open(values["rm"]["source"] + "/train.jsonl")]
    halves = {h: [json.loads(line) for line in (out / "data" / f"pairs_{h}" / "train.jsonl").read_text().splitlines()]
              for h in ("proxy", "gold")}
    split = json.loads((out / "data" / "split.json").read_text())["indices"]
    assert [train[i] for i in split["proxy"]] == halves["proxy"] and [train[i] for i in split["gold"]] == halves["gold"]
    parts = [set(split[k]) for k in ("validation", "proxy", "gold")]
    assert sum(map(len, parts)) == len(train) and set().union(*parts) == set(range(len(train)))
    assert len(parts[0]) == 4 and abs(len(parts[1]) - len(parts[2])) <= 1
    prompts = [json.loads(line) for line in (out / "data" / "validation.jsonl").read_text().splitlines()]
    assert [p["messages"][0]["content"] for p in prompts] == [train[i]["prompt"] for i in split["validation"]]
    for n, v, seed in ((10, 2, 0), (11, 3, 5), (2000, 100, 1)):
        s = split_pairs(n, v, seed)
        assert sorted(s.validation + s.proxy + s.gold) == list(range(n)) and len(s.validation) == v
    assert split_pairs(50, 5, 1) != split_pairs(50, 5, 2)


def test_an_interrupted_rl_stage_resumes_to_the_same_policy(pipeline_run, tmp_path, caplog):
    values, out, _ = pipeline_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    # killed after RL's checkpoint at step 2 (best/ holds step 2's validation policy, the best one in this run): no
    # DONE, no later checkpoint, no final/, no comparison
    assert json.loads((out / "rl" / "best" / "best.json").read_text())["step"] == 2
    for path in ("rl/DONE", "rl/final", "rl/checkpoints/step-000004", "compare", "comparison.json"):
        shutil.rmtree(copy / path, ignore_errors=True) if (copy / path).is_dir() else (copy / path).unlink(True)
    assert (copy / "rl" / "checkpoints" / "step-000002").is_dir()
    values = {**values, "rlhf": {**values["rlhf"], "output_dir": str(copy)}}
    with caplog.at_level("INFO"):
        results = run_pipeline(config_from_dict(values), resume=True)
    assert results["rl"] == {"final_step": 4}
    assert "resumed from" in caplog.text and "step-000002 at step 2" in caplog.text  # continued, not restarted
    assert "stage rm_gold is done" in caplog.text
    for policy in ("final", "checkpoints/step-000004/model"):  # the selected (best) and the last policy
        a, b = (load_file(folder / "rl" / policy / "model.safetensors") for folder in (out, copy))
        for name in a:
            assert (a[name] == b[name]).all(), (policy, name)
    assert json.loads((copy / "comparison.json").read_text()) == json.loads((out / "comparison.json").read_text())


def test_an_interrupted_stage_without_resume_is_redone_and_later_stages_with_it(pipeline_run, tmp_path):
    values, out, _ = pipeline_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    (copy / "rm_gold" / DONE).unlink()
    values = {**values, "rlhf": {**values["rlhf"], "output_dir": str(copy)}}
    config = config_from_dict(values)
    config.training.max_steps = 2  # read by RL only, which runs again (after rm_gold) from scratch
    run_pipeline(config)
    assert json.loads((copy / "rl" / DONE).read_text())["summary"] == {"final_step": 2}
    assert folder_digest(copy / "sft") == folder_digest(out / "sft")
    assert (load_file(copy / "rm_gold/final/model.safetensors")["score.weight"] ==
            load_file(out / "rm_gold/final/model.safetensors")["score.weight"]).all()


def test_comparison_against_hand_computed_values():
    sft = PolicySamples(proxy=np.array([[0.0, 1.0], [2.0, 2.0], [1.0, 0.0]]),
                        gold=np.array([[1.0, 0.0], [0.5, 0.5], [2.0, 1.0]]),
                        lengths=np.array([[2, 4], [6, 6], [4, 2]]))
    rl = PolicySamples(proxy=np.array([[1.0, 1.0], [3.0, 1.0], [2.0, 2.0]]),
                       gold=np.array([[1.0, 1.0], [0.0, 1.0], [2.0, 3.0]]),
                       lengths=np.array([[4, 4], [8, 6], [6, 2]]), kl=np.array([[0.5, 1.5], [2.0, 0.0], [1.0, 1.0]]))
    r = compare(sft, rl, resamples=200)
    # gold: per-prompt means SFT 0.5, 0.5, 1.5; RL 1.0, 0.5, 2.5 -> differences 0.5, 0, 1 -> gain 0.5
    assert r["gold"]["sft_mean"] == pytest.approx(2.5 / 3) and r["gold"]["rl_mean"] == pytest.approx(4 / 3)
    assert r["gold"]["gain"] == pytest.approx(0.5)
    # wins (ties 1/2): prompt 1 (1 vs 1: tie, 1 vs 0: win) 0.75; prompt 2 (0 < 0.5 loss, 1 > 0.5 win) 0.5;
    # prompt 3 (2 vs 2 tie, 3 > 1 win) 0.75 -> 2 / 3
    assert wins(sft.gold, rl.gold).tolist() == [0.75, 0.5, 0.75] and r["gold"]["win_rate"] == pytest.approx(2 / 3)
    assert r["proxy"]["gain"] == pytest.approx((0.5 + 0 + 1.5) / 3)
    assert r["kl_to_sft"] == pytest.approx(1.0)
    assert r["length"] == {"sft": 4.0, "rl": 5.0, "change": 1.0}
    # gold on length over the SFT completions: L = 2,4,6,6,4,2 (mean 4), s = 1,0,.5,.5,2,1 (mean 5/6)
    # Cov = mean((L-4)(s-5/6)) = (-2*1/6 + 0 + 2*-1/3 + 2*-1/3 + 0 + -2*1/6) / 6 = -2/6; Var = 16/6 -> b = -1/8
    assert length_slope(sft.lengths, sft.gold) == pytest.approx(-1 / 8)
    assert r["gold"]["length_predicted_gain"] == pytest.approx(-1 / 8)
    assert r["gold"]["length_share"] == pytest.approx(-0.25)
    assert length_slope(np.array([3, 3]), np.array([1.0, 2.0])) is None  # no length variation: no slope
    same_length = compare(PolicySamples(sft.proxy, sft.gold, np.full((3, 2), 5)), rl, resamples=20)
    assert same_length["gold"]["length_predicted_gain"] is None and "n/a (one length only)" in markdown(same_length)
    low, high = r["gold"]["gain_ci"]
    # resampled means of (0.5, 0, 1) lie in [0, 1]; centring on the observed gain shifts them by less than 0.05
    assert -0.05 <= low < 0.5 < high <= 1.05


def test_bootstrap_interval_of_a_constant_is_the_constant_and_win_rate_p_value_is_against_a_half():
    assert bootstrap_mean(np.array([0.3, 0.3, 0.3]), 100)["ci"] == pytest.approx([0.3, 0.3])
    assert bootstrap_mean(np.ones(30), 100, null=0.5)["p_value"] < 0.05
    even = bootstrap_mean(np.array([0.0, 1.0] * 15), 200, null=0.5)
    assert even["value"] == 0.5 and even["p_value"] > 0.5  # as many resamples on each side of 1/2


def test_gold_at_weight_zero_leaves_training_bit_identical(pipeline_run, tiny_model_dir, tiny_data_file, tmp_path):
    _, out, _ = pipeline_run
    proxy = {"name": "proxy", "type": "reward_model", "weight": 1.0, "model": str(out / "rm_proxy" / "final")}
    gold = {"name": "gold", "type": "reward_model", "weight": 0.0, "model": str(out / "rm_gold" / "final")}
    runs = {}
    for name, components in (("alone", [proxy]), ("with_gold", [proxy, gold])):
        from llm_pg.training.rl import train

        config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path / name, **{
            "reward.components": components, "kl.coef": 0.1, "evaluation.eval_every": 2})
        train(config)
        runs[name] = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    timing = ("time/", "speed/")
    for a, b in zip(runs["alone"], runs["with_gold"], strict=True):
        assert {k: v for k, v in a.items() if not k.startswith(timing)} == {
            k: v for k, v in b.items() if not k.startswith(timing) and "gold" not in k}
    assert any("eval/reward_gold" in m for m in runs["with_gold"])
    a, b = (load_file(tmp_path / n / "final" / "model.safetensors") for n in ("alone", "with_gold"))
    assert all((a[k] == b[k]).all() for k in a)


def test_the_length_covariate_is_the_proxys_and_never_the_golds(tiny_model_dir, tmp_path):
    """The gold stands in for the labellers (length preference included): rm.length_covariate trains the proxy
    alone, and switching it does not make the finished gold stage stale."""
    from llm_pg.pipelines.rlhf import rm_config, stage_inputs

    values = pipeline_values(tmp_path, write_tiny_pairs(tmp_path / "pairs"), tmp_path / "run", model=tiny_model_dir)
    values["rm"]["length_covariate"] = True
    config = config_from_dict(values)
    out = tmp_path / "run"
    assert rm_config(config, out, "proxy").rm.length_covariate is True
    assert rm_config(config, out, "gold").rm.length_covariate is False
    off = config_from_dict({**values, "rm": {**values["rm"], "length_covariate": False}})
    assert stage_inputs("rm_gold", config) == stage_inputs("rm_gold", off)
    assert stage_inputs("rm_proxy", config) != stage_inputs("rm_proxy", off)


@pytest.mark.parametrize("override, message", [
    ("rlhf.validation_pairs=0", "rlhf.validation_pairs: must be >= 1"),
    ("rm.eval_split=''", "rm.eval_split: the pipeline's test prompts"),
    ("reward.components=[{name: bleu}]", "reward.components: the pipeline sets the reward itself"),
    ("rlhf.validation_pairs=40", "rlhf.validation_pairs: 40 of the 32 training pairs"),
    ("rlhf.length_penalty=-1", "rlhf.length_penalty: must be >= 0"),
    ("rlhf.choose={a: [kl.coef=0.2], b: [rm.max_steps=2]}", "rlhf.choose.b: 'rm.max_steps' cannot be chosen on "
                                                             "validation"),
    ("rlhf.choose={a: [sft.learning_rate=0.1]}", "rlhf.choose.a: 'sft.learning_rate' cannot be chosen"),
    ("rlhf.choose={a: [training.seed=3]}", "rlhf.choose.a: 'training.seed' cannot be chosen"),
    ("rlhf.choose={a: [kl.coef=-1]}", "rlhf.choose.a: kl.coef: must be >= 0"),
    ("rlhf.choose={a: [rlhf.length_penalty=-2]}", "rlhf.choose.a: rlhf.length_penalty: must be >= 0"),
    ("rlhf.choose={a: [kl.cof=1]}", "rlhf.choose.a: unknown config key 'kl.cof' (did you mean 'kl.coef'?)"),
    ("rlhf.choose={a: [kl.coef]}", "rlhf.choose.a: 'kl.coef' is not an override"),
    ("rlhf.choose={a: kl.coef=0.1}", "rlhf.choose.a: expected a list"),
    ("rlhf.choose={kl.1: []}", "rlhf.choose.kl.1: a candidate's name is a folder name"),
])
def test_bad_pipeline_config_is_one_line(tiny_model_dir, tmp_path, override, message):
    values = pipeline_values(tmp_path, write_tiny_pairs(tmp_path / "pairs"), tmp_path / "run",
                             model=tiny_model_dir)
    (tmp_path / "rlhf.yaml").write_text(yaml.safe_dump(values))
    done = run_cli("rlhf", "--config", tmp_path / "rlhf.yaml", override, cwd=tmp_path)
    assert done.returncode == 2
    assert_one_line_error(done.stderr, message)


@pytest.mark.parametrize("kind", ["transcript", "conversational"])
def test_prepare_keeps_multi_turn_prompts_and_the_raw_records_of_each_format(tmp_path, kind):
    """HH-RLHF transcripts (or conversational records) become `messages` prompts with every earlier turn, the
    chosen answer as the reference, and the halves hold the records as given, so `llm-pg rm` reads them alike."""
    from llm_pg.pipelines.rlhf_data import prepare

    def record(i):
        turns = [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"},
                 {"role": "user", "content": f"follow-up {i}"}]
        if kind == "conversational":
            return {"prompt": turns, "chosen": f"good {i}", "rejected": f"bad {i}"}
        head = f"\n\nHuman: question {i}\n\nAssistant: answer {i}\n\nHuman: follow-up {i}\n\nAssistant:"
        return {"chosen": f"{head} good {i}", "rejected": f"{head} bad {i}"}

    (tmp_path / "pairs").mkdir()
    for split, n in (("train", 9), ("test", 3)):
        (tmp_path / "pairs" / f"{split}.jsonl").write_text("".join(json.dumps(record(i)) + "\n" for i in range(n)))
    config = config_from_dict({"model": {"name_or_path": "unused"}, "rm": {"source": str(tmp_path / "pairs")},
                               "rlhf": {"validation_pairs": 3}})
    counts = prepare(config, tmp_path / "data")
    assert counts == {"train_pairs": 9, "validation": 3, "proxy": 3, "gold": 3, "test": 3}
    rows = [json.loads(line) for line in (tmp_path / "data" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    for row in rows:
        i = row["id"].split("-")[1]
        assert row["messages"] == [{"role": "user", "content": f"question {i}"},
                                   {"role": "assistant", "content": f"answer {i}"},
                                   {"role": "user", "content": f"follow-up {i}"}]
        assert row["reference"] == f"good {i}"
    proxy = [json.loads(line) for line in (tmp_path / "data" / "pairs_proxy" / "train.jsonl").read_text().splitlines()]
    assert all(r in [record(i) for i in range(9)] for r in proxy)
    test = [json.loads(line) for line in (tmp_path / "data" / "test.jsonl").read_text().splitlines()]
    assert [r["id"] for r in test] == ["test-0", "test-1", "test-2"]


def test_a_finished_stage_whose_settings_changed_is_refused_and_runtime_settings_are_not(pipeline_run, tmp_path):
    values, out, _ = pipeline_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    values = {**values, "rlhf": {**values["rlhf"], "output_dir": str(copy)}}
    before = folder_digest(copy)
    changed = config_from_dict({**values, "sft": {**values["sft"], "max_steps": 3}})
    with pytest.raises(ConfigError, match=r"rlhf: stage sft in .*sft was done with other settings \(sft.max_steps: "
                                          r"2 -> 3\); delete .*sft to redo it"):
        run_pipeline(changed)
    assert folder_digest(copy) == before  # refused before anything was written
    faster = config_from_dict({**values, "training": {**values["training"], "num_threads": 2, "save_every": 1}})
    assert run_pipeline(faster)["rl"] == {"final_step": 4}  # how fast or how often to save is no input: skipped
    after = folder_digest(copy)
    assert after.pop("config.yaml") != before.pop("config.yaml")  # the config of the last run; no stage's files
    assert after == before


# ------------------------------------------------------------- a rerun or a resume with other inputs, from the CLI

def _copy_with_config(pipeline_run, tmp_path, **sections):
    """A copy of the finished pipeline in tmp_path/run and its config (rlhf.output_dir = the copy) as YAML."""
    values, out, _ = pipeline_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    values = {**values, "rlhf": {**values["rlhf"], "output_dir": str(copy)}, **sections}
    (tmp_path / "rlhf.yaml").write_text(yaml.safe_dump(values))
    return copy, tmp_path / "rlhf.yaml"


def test_a_rerun_after_the_pairs_changed_is_refused_naming_the_stage(pipeline_run, tmp_path):
    """The same rm.source path with other content: the data stage was done for the old pairs, so every stage after
    it would be reused for data it never saw (the issue: every stage 'done; skipped', the old comparison)."""
    copy, config = _copy_with_config(pipeline_run, tmp_path)
    pairs = Path(pipeline_run[0]["rm"]["source"]) / "train.jsonl"
    original = pairs.read_text()
    before = snapshot(copy)
    try:  # the module's pairs, shared with the other tests: restored whatever happens
        lines = original.splitlines(keepends=True)
        pairs.write_text("".join(lines[1:] + lines[:1]))  # the same pairs in another order: another split
        done = run_cli("rlhf", "--config", config, cwd=tmp_path)
    finally:
        pairs.write_text(original)
    assert done.returncode == 2, done.stderr[-3000:]
    assert_one_line_error(done.stderr, "rlhf: the data of stage data changed since it was done (rm.source ",
                          "sha256", "restore that data", f"delete {copy / 'data'} to redo stage data and every stage "
                                                         "after it", "--overwrite")
    assert "is done" not in done.stderr  # nothing was skipped as done, nothing ran
    assert snapshot(copy) == before


def test_a_rerun_after_a_stage_output_changed_is_refused_naming_the_stage(pipeline_run, tmp_path):
    copy, config = _copy_with_config(pipeline_run, tmp_path)
    weights = copy / "rm_proxy" / "final" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one flipped bit in the proxy reward model that RL was trained against
    weights.write_bytes(bytes(data))
    before = snapshot(copy)
    done = run_cli("rlhf", "--config", config, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert_one_line_error(done.stderr, "rlhf: the output of stage rm_proxy is damaged or was changed since the stage "
                                       f"was done ({weights} changed (its sha256 differs from DONE's)",
                          f"delete {copy / 'rm_proxy'} to redo stage rm_proxy")
    assert snapshot(copy) == before


def test_rlhf_resume_of_an_interrupted_rl_stage_with_other_settings_is_refused(pipeline_run, tmp_path):
    """The pipeline calls the trainer itself, so `train --resume`'s check is its own: a changed learning rate and KL
    coefficient are refused before anything is written (they were recorded and half applied)."""
    values = pipeline_run[0]
    copy, config = _copy_with_config(pipeline_run, tmp_path, training={**values["training"], "learning_rate": 0.05},
                                     kl={**values["kl"], "coef": 0.2})
    for path in ("rl/DONE", "rl/final", "rl/checkpoints/step-000004", "compare", "comparison.json"):
        shutil.rmtree(copy / path) if (copy / path).is_dir() else (copy / path).unlink()  # killed after step 2
    before = snapshot(copy)
    done = run_cli("rlhf", "--resume", "--config", config, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert_one_line_error(done.stderr, f"rlhf --resume: stage rl in {copy / 'rl'} ran with other settings (",
                          "kl.coef: 0.1 -> 0.2", "training.learning_rate: 0.01 -> 0.05",
                          "restore them to continue it, or run without --resume to redo stage rl")
    assert snapshot(copy) == before


def nll_by_hand(model, prompt_ids: list[int], answer_ids: list[int]) -> float:
    """-sum_t log p(a_t | prompt, a_<t): one forward pass of prompt + answer, no padding, no batching."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + answer_ids])).logits[0].double()  # (L, V)
    logp = torch.log_softmax(logits, -1)
    return -sum(logp[len(prompt_ids) + t - 1, a].item() for t, a in enumerate(answer_ids))


def test_answer_quality_against_a_direct_computation(pipeline_run, tiny_model_dir):
    """comparison.json's "quality": the perplexity of the SFT, RL and human answers under the starting model from a
    forward pass by hand, the other measures from the samples files and the test records."""
    from transformers import AutoModelForCausalLM

    from llm_pg.data.prompts import load_examples
    from llm_pg.models.policy import load_tokenizer
    from llm_pg.pipelines.rlhf_configs import data_config

    values, out, done = pipeline_run
    q = json.loads((out / "comparison.json").read_text())["quality"]
    assert q["judge"] == str(tiny_model_dir) and set(q["policies"]) == {"sft", "rl"} and set(q["vs_sft"]) == {"rl"}
    tokenizer = load_tokenizer(config_from_dict(values).model)
    examples = load_examples(data_config(config_from_dict(values), out), "test", tokenizer, 6)
    records = [json.loads(line) for line in (out / "data" / "test.jsonl").read_text().splitlines()][:6]
    assert [e.references[0] for e in examples] == [r["reference"] for r in records]
    prompt = {e.id: e.prompt_ids for e in examples}
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    answers = {name: [(r["id"], r["completion"], r["truncated"]) for r in map(
        json.loads, (out / "compare" / f"samples_{name}.jsonl").read_text().splitlines())] for name in ("sft", "rl")}
    answers["human"] = [(r["id"], r["reference"], None) for r in records]
    for name, rows in answers.items():
        tokens = [tokenizer(text.strip(), add_special_tokens=False)["input_ids"] for _, text, _ in rows]
        nll = sum(nll_by_hand(model, prompt[i], ids) for (i, _, _), ids in zip(rows, tokens) if ids)
        row = q["human"] if name == "human" else q["policies"][name]
        assert row["perplexity"] == pytest.approx(math.exp(nll / sum(map(len, tokens))), rel=1e-5), name
        grams = [[tuple(w[i:i + 3]) for i in range(len(w) - 2)] for w in (t.lower().split() for _, t, _ in rows)]
        repeated = [1 - len(set(g)) / len(g) if g else 0.0 for g in grams]
        pairs = [tuple(w[i:i + 2]) for w in (t.lower().split() for _, t, _ in rows) for i in range(len(w) - 1)]
        cut = [len(ids) > 6 for ids in tokens] if name == "human" else [c for _, _, c in rows]
        assert row == pytest.approx({"perplexity": row["perplexity"], "repeated_3gram_rate": np.mean(repeated),
                                     "distinct2": len(set(pairs)) / len(pairs), "truncated_rate": np.mean(cut),
                                     "empty_rate": np.mean([not t.strip() for _, t, _ in rows])}), name
    samples = [json.loads(line) for line in (out / "compare" / "samples_sft.jsonl").read_text().splitlines()]
    assert all(r["tokens"] == 6 for r in samples if r["truncated"])  # cut: max_new_tokens tokens without an end
    assert any(r["truncated"] for r in samples) and q["human"]["truncated_rate"] == 0  # one-word chosen answers
    for metric, d in q["vs_sft"]["rl"].items():  # RL - SFT of each corpus statistic, its interval around it
        assert d["difference"] == pytest.approx(q["policies"]["rl"][metric] - q["policies"]["sft"][metric])
        assert d["ci"][0] <= d["difference"] <= d["ci"][1] and 0 < d["p_value"] <= 1
    report = (out / "report.md").read_text()
    assert "## Answer quality (test prompts)" in report and f"| human (chosen) | {q['human']['perplexity']:.3f} |" \
        in report and f"| RL | {q['policies']['rl']['perplexity']:.3f} (" in report
    assert f"answer perplexity under the starting model: human {q['human']['perplexity']:.2f}, SFT " in done.stdout
