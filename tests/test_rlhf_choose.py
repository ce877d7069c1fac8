"""The rl stage against length hacking (issue 28): rlhf.length_penalty (a length term in RL's reward, its target the
median length of the answers people chose) and rlhf.choose (candidate RL settings, each trained from SFT, chosen
by the gold gain over SFT at matched length on the validation prompts, never the test prompts)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from llm_pg.config.schema import RewardConfig, config_from_dict
from llm_pg.errors import ConfigError
from llm_pg.evaluation.length_control import regression_gain
from llm_pg.pipelines.rlhf import DONE, check_finished_stages, rl_config, run_pipeline, run_stage, stage_inputs, stages
from llm_pg.rewards import RewardMix
from test_rlhf import folder_digest, pipeline_run  # noqa: F401  (the finished tiny pipeline, once per module)

# the base config has a length penalty (so the compare stage runs with one: its proxy and gold must not move);
# candidates: as configured, without the penalty, and a strong KL; each 4 RL steps from the SFT policy
CHOOSE = {"as_configured": [], "no_length": ["rlhf.length_penalty=0"], "kl_high": ["kl.coef=0.5"]}
PENALTY = 0.5


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def chosen_run(pipeline_run, tmp_path_factory):  # noqa: F811
    """The finished pipeline copied, its rl stage redone with rlhf.choose while the prompt records' reader refuses
    the test split: (values, folder, rl summary, the splits read during the rl stage, the pipeline's results)."""
    values, out, _ = pipeline_run
    copy = tmp_path_factory.mktemp("choose") / "run"
    shutil.copytree(out, copy)
    for path in ("rl", "compare", "plots"):
        shutil.rmtree(copy / path)
    for path in ("comparison.json", "report.md"):
        (copy / path).unlink()
    values = {**values, "rlhf": {**values["rlhf"], "output_dir": str(copy), "choose": CHOOSE,
                                 "length_penalty": PENALTY}}
    config = config_from_dict(values)
    import llm_pg.data.prompts as prompts

    splits, read = [], prompts.load_records

    def watched(data, split):  # every prompt loader reads records here; the test prompts fail the stage
        splits.append(split)
        if split == data.test_split:
            raise AssertionError(f"the rl stage read the test prompts ({data.source}, {split})")
        return read(data, split)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(prompts, "load_records", watched)
        summary = run_stage("rl", config, copy, resume=False)
    results = run_pipeline(config)  # data .. rl done: only the comparison runs, on the test prompts
    return values, copy, summary, splits, results


def test_the_length_target_is_the_median_words_of_the_proxy_halfs_chosen_answers(tmp_path):
    from llm_pg.pipelines.rlhf_data import length_target

    references = ["one", "one two three four", "a b c d e", "1 2 3 4 5 6 7 8 9", "x " * 40, "y " * 50]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"id": f"train-{i}", "reference": r}) + "\n"
                                                  for i, r in enumerate(references)))
    (tmp_path / "split.json").write_text(json.dumps({"indices": {"validation": [], "proxy": [0, 1, 2, 3],
                                                                 "gold": [4, 5]}}))
    assert length_target(tmp_path) == 4  # proxy answers: 1, 4, 5, 9 words -> the lower median 4 (gold's ignored)
    split = json.loads((tmp_path / "split.json").read_text())
    split["indices"]["proxy"] = [0, 1, 2]
    (tmp_path / "split.json").write_text(json.dumps(split))
    assert length_target(tmp_path) == 4  # 1, 4, 5


def test_the_length_penalty_term_on_the_tiny_pipeline(pipeline_run):  # noqa: F811
    from llm_pg.pipelines.rlhf_data import length_target

    values, out, _ = pipeline_run
    pairs = _read_jsonl(out / "data" / "pairs_proxy" / "train.jsonl")  # the raw pairs: chosen is the answer alone
    words = sorted(len(p["chosen"].split()) for p in pairs)
    assert words[(len(words) - 1) // 2] == length_target(out / "data") == 3  # 2 or 3 words: "the ball.", "a big house."
    config = config_from_dict({**values, "rlhf": {**values["rlhf"], "length_penalty": PENALTY}})
    term = rl_config(config, out).reward.components[-1]
    assert term == {"name": "length_penalty", "type": "length_penalty", "weight": PENALTY, "target": 3,
                    "unit": "words"}
    assert [c["name"] for c in rl_config(config_from_dict(values), out).reward.components] == ["proxy", "gold"]
    mix = RewardMix.from_config(RewardConfig(components=[term]))
    completions = ["the red apple.", "a", "one two three four five six", ""]
    scored = mix.reward_batch([""] * 4, completions, [["x"]] * 4, update=False)
    assert scored.components["length_penalty"] == pytest.approx([0, -2 / 3, -1, -1])  # -|n - 3| / 3: n = 3, 1, 6, 0
    assert scored.rewards == pytest.approx([0.0, -1 / 3, -0.5, -0.5])  # R: times the coefficient 0.5
    # an rl setting: part of the stage's inputs when set, and absent at 0 (a DONE from before it existed is valid)
    assert stage_inputs("rl", config)["rlhf.length_penalty"] == PENALTY
    assert "rlhf.length_penalty" not in stage_inputs("rl", config_from_dict(values))
    without = config_from_dict(values)
    assert all(stage_inputs(s, config) == stage_inputs(s, without) for s in stages(config) if s != "rl")


def test_the_choice_reads_the_validation_prompts_only(chosen_run):
    values, out, summary, splits, _ = chosen_run
    assert "test" not in splits and set(splits) == {"train", "validation"}  # and reading "test" would have failed
    validation = [r["id"] for r in _read_jsonl(out / "data" / "validation.jsonl")]
    K = values["rlhf"]["compare_samples"]
    for policy in ("sft", *CHOOSE):
        rows = _read_jsonl(out / "rl" / "validation" / f"samples_{policy}.jsonl")
        assert [r["id"] for r in rows] == [i for i in validation for _ in range(K)], policy
    assert summary["chosen"] in CHOOSE and (out / "rl" / DONE).is_file()


def _samples(path):
    """(gold, lengths) of a samples file as (P, K) arrays, rows in the file's prompt order."""
    rows = _read_jsonl(path)
    K = 1 + max(r["sample"] for r in rows)
    return (np.reshape([r["gold"] for r in rows], (-1, K)), np.reshape([r["tokens"] for r in rows], (-1, K)))


def test_the_choice_is_the_argmax_of_the_gold_gain_at_matched_length(chosen_run):
    values, out, summary, _, _ = chosen_run
    choice = json.loads((out / "rl" / "choice.json").read_text())
    sft_gold, sft_lengths = _samples(out / "rl" / "validation" / "samples_sft.jsonl")
    scores = {}
    for name in CHOOSE:
        gold, lengths = _samples(out / "rl" / "validation" / f"samples_{name}.jsonl")
        matched = regression_gain(sft_gold, sft_lengths, gold, lengths, values["evaluation"]["bootstrap_resamples"])
        record = choice["candidates"][name]
        assert matched is not None and record["validation"]["gold"]["matched_length"]["regression"] == matched
        scores[name] = matched["value"]
        assert record["score"] == matched["value"]
        assert record["validation"]["gold"]["gain"] == pytest.approx((gold.mean(1) - sft_gold.mean(1)).mean())
        assert record["validation"]["length"]["rl"] == pytest.approx(lengths.mean())
        assert record["overrides"] == CHOOSE[name] and record["final_step"] == 4
    best = max(scores.values())
    assert choice["chosen"] == [n for n in CHOOSE if scores[n] == best][0] == summary["chosen"]  # ties: the first
    assert list(choice["candidates"]) == list(CHOOSE)  # in the order listed


def test_choose_takes_the_highest_gain_at_matched_length_the_first_of_a_tie_and_the_raw_gain_at_one_length():
    from llm_pg.pipelines.rlhf_choose import choose
    from llm_pg.pipelines.rlhf_statistics import PolicySamples

    lengths = np.array([[2, 4], [6, 6], [4, 2]])
    sft = PolicySamples(proxy=np.zeros((3, 2)), gold=0.5 * lengths, lengths=lengths)  # gold rises 1/2 per token
    # "longer": +1 gold on every answer, all of it from 2 more tokens on that slope -> c = 1 - 2 * 1/2 = 0
    # "better": +0.5 at the same lengths -> c = 0.5 (and raw), so it wins although its raw gain is lower
    longer = PolicySamples(sft.proxy, sft.gold + 1.0, lengths + 2)
    better = PolicySamples(sft.proxy, sft.gold + 0.5, lengths)
    result = choose(sft, {"longer": longer, "better": better, "same": better}, resamples=50)
    assert result["candidates"]["better"]["score"] == pytest.approx(0.5)
    assert result["candidates"]["longer"]["score"] == pytest.approx(0.0, abs=1e-9)
    assert result["candidates"]["better"]["validation"]["gold"]["gain"] == pytest.approx(0.5)
    assert result["candidates"]["longer"]["validation"]["gold"]["gain"] == pytest.approx(1.0)
    assert result["chosen"] == "better"  # the tie with "same", listed after it, goes to the first
    assert choose(sft, {"same": better, "better": better}, 50)["chosen"] == "same"
    flat = PolicySamples(sft.proxy, sft.gold, np.full((3, 2), 6))  # every answer 6 tokens: no slope can be fitted
    one_length = choose(flat, {"a": PolicySamples(sft.proxy, sft.gold + 0.25, flat.lengths)}, 50)
    assert one_length["candidates"]["a"]["validation"]["gold"]["matched_length"]["regression"] is None
    assert one_length["candidates"]["a"]["score"] == pytest.approx(0.25)  # the raw gain, which is at one length


def test_the_chosen_candidates_policy_is_rl_final_and_the_comparisons(chosen_run, pipeline_run):  # noqa: F811
    values, out, summary, _, results = chosen_run
    chosen = summary["chosen"]
    assert folder_digest(out / "rl" / "final") == folder_digest(out / "rl" / "candidates" / chosen / "final")
    assert (out / "rl" / "metrics.jsonl").read_bytes() == \
        (out / "rl" / "candidates" / chosen / "metrics.jsonl").read_bytes()
    # the length penalty trained: reward = proxy + 0.5 * length term, in the candidates that keep it
    for name, has_penalty in (("as_configured", True), ("no_length", False)):
        steps = [m for m in _read_jsonl(out / "rl" / "candidates" / name / "metrics.jsonl") if "reward/mean" in m]
        assert steps and all(("reward/length_penalty" in m) == has_penalty for m in steps)
        for m in steps:
            expected = m["reward/proxy"] + (PENALTY * m["reward/length_penalty"] if has_penalty else 0.0)
            assert m["reward/mean"] == pytest.approx(expected, abs=1e-5)
        done = json.loads((out / "rl" / "candidates" / name / DONE).read_text())["summary"]
        assert done == {"final_step": 4, **({"length_penalty_target": 3} if has_penalty else {})}
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["rl_choice"] == json.loads((out / "rl" / "choice.json").read_text())
    assert results["rl"] == summary
    assert "RL settings chosen on the validation prompts" in (out / "report.md").read_text()
    # the compare stage's proxy and gold are the reward models' alone: the SFT policy's test samples score as they
    # do without the length penalty, and the RL policy compared is rl/final (the chosen candidate)
    base = pipeline_run[1]
    assert (out / "compare" / "samples_sft.jsonl").read_text() == (base / "compare" / "samples_sft.jsonl").read_text()
    assert comparison["gold"]["sft_mean"] == json.loads((base / "comparison.json").read_text())["gold"]["sft_mean"]


def test_a_finished_choice_is_skipped_and_a_changed_choose_redoes_rl(chosen_run, tmp_path):
    values, out, summary, _, _ = chosen_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    values = {**values, "rlhf": {**values["rlhf"], "output_dir": str(copy)}}
    before = folder_digest(copy)
    run_pipeline(config_from_dict(values))  # choose unchanged: every stage is done
    after = folder_digest(copy)
    assert after.pop("config.yaml") and before.pop("config.yaml") and after == before
    other = {**values, "rlhf": {**values["rlhf"], "choose": {"kl_low": ["kl.coef=0.01"]}}}
    settled = folder_digest(copy)
    with pytest.raises(ConfigError, match=r"stage rl in .* was done with other settings \(rlhf\.choose\.as_configu"):
        run_pipeline(config_from_dict(other))  # rl's settings changed: refused before anything is written
    assert folder_digest(copy) == settled
    shutil.rmtree(copy / "rl")  # as the refusal says: rl and the stages after it are redone with the new candidates
    results = run_pipeline(config_from_dict(other))
    assert results["rl"] == {"final_step": 4, "chosen": "kl_low", "length_penalty_target": 3}
    assert sorted(p.name for p in (copy / "rl" / "candidates").iterdir()) == ["kl_low"]
    assert json.loads((copy / "comparison.json").read_text())["rl_choice"]["chosen"] == "kl_low"
    assert folder_digest(copy / "rm_gold") == folder_digest(out / "rm_gold")  # the earlier stages were kept


def test_an_interrupted_candidate_resumes_and_the_finished_ones_are_kept(chosen_run, tmp_path, caplog):
    values, out, summary, _, _ = chosen_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    last = copy / "rl" / "candidates" / "kl_high"  # killed after its checkpoint at step 2
    for path in ("rl/DONE", "rl/final", "rl/choice.json", "rl/metrics.jsonl", "rl/validation", "compare",
                 "comparison.json"):
        shutil.rmtree(copy / path) if (copy / path).is_dir() else (copy / path).unlink()
    for path in ("DONE", "final", "checkpoints/step-000004"):
        shutil.rmtree(last / path) if (last / path).is_dir() else (last / path).unlink()
    kept = {n: folder_digest(copy / "rl" / "candidates" / n) for n in ("as_configured", "no_length")}
    values = {**values, "rlhf": {**values["rlhf"], "output_dir": str(copy)}}
    changed = {**values, "rlhf": {**values["rlhf"], "choose": {**CHOOSE, "no_length": ["rlhf.length_penalty=0.1"]}}}
    with pytest.raises(ConfigError, match=r"candidate no_length in .* was done with other settings"):
        check_finished_stages(config_from_dict(changed), copy, resume=True)
    with caplog.at_level("INFO"):
        results = run_pipeline(config_from_dict(values), resume=True)
    assert "step-000002 at step 2" in caplog.text and results["rl"] == summary
    assert {n: folder_digest(copy / "rl" / "candidates" / n) for n in kept} == kept  # not retrained
    assert folder_digest(copy / "rl" / "final") == folder_digest(out / "rl" / "final")
    assert json.loads((copy / "rl" / "choice.json").read_text()) == json.loads((out / "rl" / "choice.json").read_text())


def test_choose_with_an_empty_mapping_leaves_the_rl_stage_as_it_was(pipeline_run):  # noqa: F811
    values = pipeline_run[0]
    empty = config_from_dict({**values, "rlhf": {**values["rlhf"], "choose": {}}})
    assert stage_inputs("rl", empty) == stage_inputs("rl", config_from_dict(values))
    assert not any(k.startswith("rlhf.") for k in stage_inputs("rl", empty))
    listed = config_from_dict({**values, "rlhf": {**values["rlhf"], "choose": CHOOSE}})
    assert stage_inputs("rl", listed)["rlhf.choose.kl_high"] == ["kl.coef=0.5"]


def test_a_candidate_overrides_rl_settings_only(pipeline_run):  # noqa: F811
    from llm_pg.pipelines.rlhf_choose import candidate_config, rl_only

    values = pipeline_run[0]
    for key in ("kl.coef", "kl.mode", "algorithm.name", "training.learning_rate", "reward.normalize", "reward.clip",
                "rlhf.length_penalty", "ppo.clip_eps", "evaluation.final_policy"):
        assert rl_only(key), key
    for key in ("rm.max_steps", "sft.max_steps", "data.max_prompt_tokens", "model.name_or_path", "training.seed",
                "generation.temperature", "reward.components", "training.output_dir", "rlhf.dpo",
                "evaluation.bootstrap_resamples", "training.num_threads"):
        assert not rl_only(key), key
    config = config_from_dict({**values, "rlhf": {**values["rlhf"], "choose": CHOOSE}})
    high = candidate_config(config, "kl_high")
    assert high.kl.coef == 0.5 and high.rlhf.choose == {} and high.training == config.training


def test_resume_redoes_an_rl_folder_of_the_other_kind(pipeline_run, tmp_path):  # noqa: F811
    """--resume continues rl/ only when it holds what the config of now makes there: one RL run without
    rlhf.choose, candidates with it; the other kind is redone (run_stage deletes it)."""
    from llm_pg.pipelines.rlhf import other_layout

    values, out, _ = pipeline_run
    with_choose = config_from_dict({**values, "rlhf": {**values["rlhf"], "choose": CHOOSE}})
    without = config_from_dict(values)
    assert other_layout("rl", with_choose, out / "rl") and not other_layout("rl", without, out / "rl")
    (tmp_path / "rl" / "candidates" / "kl_high").mkdir(parents=True)
    assert other_layout("rl", without, tmp_path / "rl") and not other_layout("rl", with_choose, tmp_path / "rl")
    assert not other_layout("rm_proxy", with_choose, out / "rm_proxy")
