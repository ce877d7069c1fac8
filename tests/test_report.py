"""A short run writes the report (tables, PNG plots), evaluates during training, keeps the best policy, logs
completions and TensorBoard events; `llm-pg report` rebuilds the report; the reward-hacking check stops a run."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import yaml

from helpers import assert_one_line_error, tiny_config
from llm_pg.cli import main
from llm_pg.evaluation.periodic import RewardHackingDetector, training_reward
from llm_pg.reporting.report import write_run_report
from llm_pg.runs.marker import write_marker
from llm_pg.training.rl import train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RUN = {"data.split_fractions": [0.5, 0.25, 0.25], "training.max_steps": 4, "evaluation.before_training": True,
       "evaluation.after_training": True, "evaluation.eval_every": 2, "evaluation.metric": "rougeL",
       "evaluation.log_completions_every": 2, "training.report_to": ["tensorboard"], "training.learning_rate": 3e-3}


@pytest.fixture(scope="module")
def run(tiny_model_dir, tiny_data_file, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("report_run")
    result = train(tiny_config(tiny_model_dir, tiny_data_file, run_dir, **RUN))
    return run_dir, result


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_run_writes_a_report_with_tables_and_plots(run):
    run_dir, _ = run
    md = (run_dir / "report.md").read_text()
    assert "| metric | before | after | change | 95 % CI | p |" in md
    assert "| prompt | reference | before | after |" in md
    before = json.loads((run_dir / "eval_before.json").read_text())["scores"]
    after = json.loads((run_dir / "eval_after.json").read_text())["scores"]
    assert f"| rougeL | {before['rougeL']:.4f} | {after['rougeL']:.4f} |" in md
    expected = {"changes.png", "reward.png", "heldout.png", "entropy.png", "length.png"}
    plots = {p.name for p in (run_dir / "plots").glob("*.png")}
    assert plots == expected  # no KL (kl_coef 0: all zeros) and no value loss (REINFORCE has no value head)
    for name in plots:
        assert (run_dir / "plots" / name).read_bytes()[:8] == PNG_MAGIC
        assert f"](plots/{name})" in md
    page = (run_dir / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(plots)  # self-contained
    assert "<table>" in page and "config.yaml" in page


def test_llm_pg_report_rebuilds_the_same_report(run, tmp_path, capsys):
    run_dir, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    original = (copy / "report.md").read_text()
    (copy / "report.md").unlink()
    shutil.rmtree(copy / "plots")
    assert main(["report", str(copy)]) == 0
    rebuilt = (copy / "report.md").read_text()
    assert rebuilt.split("\n", 1)[1] == original.split("\n", 1)[1]  # all but the title (the folder's name)
    assert rebuilt.startswith("# Training report: copy")
    assert len(list((copy / "plots").glob("*.png"))) == 5
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "not a run folder" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["rm", "rlhf", None])
def test_report_never_replaces_the_report_of_another_command_or_a_folder_that_is_no_run(kind, tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "config.yaml").write_text("rm: {}\n")
    (folder / "report.md").write_text("# Reward model: held-out pairs\n")
    if kind:
        write_marker(folder, kind, kind)
    assert main(["report", str(folder)]) == 2
    what = {"rm": "an `llm-pg rm` reward-model run", "rlhf": "an `llm-pg rlhf` pipeline",
            None: "no llm-pg train run"}[kind]
    assert_one_line_error(capsys.readouterr().err, str(folder), what, "`llm-pg report` rebuilds the report of a "
                          "train run")
    assert (folder / "report.md").read_text() == "# Reward model: held-out pairs\n"
    assert not (folder / "report.html").exists() and not (folder / "plots").exists()


def test_validation_every_n_steps_and_the_best_policy(run):
    run_dir, result = run
    evals = [m for m in read_jsonl(run_dir / "metrics.jsonl") if "eval/rougeL" in m]
    assert [m["step"] for m in evals] == [2, 4]
    assert {"eval/bleu", "eval/chrf", "eval/reward", "eval/perplexity", "eval/distinct2"} <= set(evals[0])
    best = json.loads((run_dir / "best" / "best.json").read_text())
    top = max(evals, key=lambda m: (m["eval/rougeL"], -m["step"]))  # the first of equal scores is kept
    assert best["step"] == top["step"] and best["value"] == pytest.approx(top["eval/rougeL"])
    assert (run_dir / "best" / "model.safetensors").is_file() and (run_dir / "best" / "tokenizer.json").is_file()
    assert result["evaluator"]["best"]["step"] == best["step"]
    state = json.loads((run_dir / "checkpoints" / "step-000004" / "trainer_state.json").read_text())
    # the hacking check, saved for --resume: streak 1 exactly when the mean training reward of steps 3-4 beat that
    # of steps 1-2 while validation ROUGE-L fell from step 2 to step 4
    steps = {m["step"]: m["reward/mean"] for m in read_jsonl(run_dir / "metrics.jsonl") if "reward/mean" in m}
    rose = steps[3] + steps[4] > steps[1] + steps[2]
    fell = evals[1]["eval/rougeL"] < evals[0]["eval/rougeL"]
    detector = state["evaluator"]["detector"]
    assert detector["streak"] == int(rose and fell)
    assert detector["previous_metric"] == pytest.approx(evals[1]["eval/rougeL"])
    assert detector["previous_reward"] == pytest.approx((steps[3] + steps[4]) / 2)


def test_completions_table_every_n_steps(run):
    run_dir, _ = run
    rows = read_jsonl(run_dir / "completions.jsonl")
    assert sorted({r["step"] for r in rows}) == [2, 4]
    assert len([r for r in rows if r["step"] == 2]) == 4  # 2 prompts x 2 samples
    assert {"prompt", "completion", "reward", "references"} <= set(rows[0])


def test_tensorboard_receives_scalars_and_the_completions_table(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = run
    events = list(run_dir.rglob("events.out.tfevents.*"))
    assert events
    scalars, texts = set(), set()
    for path in events:
        acc = EventAccumulator(str(path.parent), size_guidance={"tensors": 0, "scalars": 0})
        acc.Reload()
        scalars |= set(acc.Tags()["scalars"])
        texts |= set(acc.Tags()["tensors"])
    assert {"reward/mean", "policy/entropy", "eval/rougeL"} <= scalars
    assert any("completions" in t for t in texts)


def test_value_loss_is_plotted_when_logged(run, tmp_path):
    """An Actor-Critic run logs loss/value and value/explained_variance: the report plots them."""
    run_dir, _ = run
    copy = tmp_path / "ac"
    shutil.copytree(run_dir, copy)
    rows = read_jsonl(copy / "metrics.jsonl")
    for row in rows:
        if "reward/mean" in row:
            row.update({"loss/value": 1.0 / row["step"], "value/explained_variance": 0.1 * row["step"],
                        "policy/kl": 0.01 * row["step"]})
    (copy / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths = write_run_report(copy)
    assert {"value_loss.png", "explained_variance.png", "kl.png"} <= {p.name for p in paths["plots"]}


def test_hacking_detector_counts_evaluations_where_reward_rises_and_metric_falls():
    detector = RewardHackingDetector(patience=2)
    assert not detector.update(0.1, 0.5)  # first evaluation: nothing to compare with
    assert not detector.update(0.2, 0.4)  # streak 1
    assert detector.update(0.3, 0.3)  # streak 2: fires
    assert not detector.update(0.2, 0.2)  # reward fell: streak resets
    lower = RewardHackingDetector(patience=1, lower_is_better=True)
    lower.update(0.1, 5.0)
    assert lower.update(0.2, 6.0)  # perplexity up = worse
    restored = RewardHackingDetector(patience=2)
    restored.load_state_dict(detector.state_dict())
    assert restored.state_dict() == detector.state_dict() == {"previous_reward": 0.2, "previous_metric": 0.2,
                                                              "streak": 0}


def test_stop_on_hacking_ends_the_run_with_report(tiny_model_dir, tiny_data_file, tmp_path, monkeypatch, caplog):
    """A reward that rises every step while the held-out BLEU falls: the run stops after `patience` such evals."""
    import llm_pg.evaluation.periodic as periodic

    reward_file = tmp_path / "rising.py"
    reward_file.write_text("calls = [0]\ndef rising(prompts, completions, references):\n"
                           "    calls[0] += 1\n    return [0.01 * calls[0]] * len(completions)\n")
    falling = iter([0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    real = periodic.evaluate_split

    def fake_evaluate(*args, **kwargs):
        scores, gens = real(*args, **kwargs)
        return {**scores, "bleu": next(falling)}, gens

    monkeypatch.setattr(periodic, "evaluate_split", fake_evaluate)
    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path / "run", **{
        "reward.components": [{"name": "rising", "function": f"{reward_file}:rising"}],
        "algorithm.baseline": "none",  # the reward is the same for every sample of a step: no baseline, or no update
        "training.max_steps": 6, "evaluation.eval_every": 1, "evaluation.metric": "bleu",
        "evaluation.hacking_patience": 2, "evaluation.stop_on_hacking": True,
        "evaluation.reference_model": "none", "data.split_fractions": [0.5, 0.25, 0.25]})
    with caplog.at_level(logging.WARNING):
        result = train(config)
    assert result["final_step"] == 3  # evals at 1, 2, 3: falling with rising reward at 2 and 3
    assert any("possible reward hacking" in r.message for r in caplog.records)
    assert (tmp_path / "run" / "checkpoints" / "step-000003").is_dir()
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    assert "Possible reward hacking" in (tmp_path / "run" / "report.md").read_text()
    best = json.loads((tmp_path / "run" / "best" / "best.json").read_text())
    assert best["step"] == 1 and best["value"] == 0.5


def test_report_without_evaluation_says_how_to_enable_it(tiny_model_dir, tiny_data_file, tmp_path):
    train(tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{"training.max_steps": 2}))
    md = (tmp_path / "report.md").read_text()
    assert "evaluation.before_training: true" in md and "![reward](plots/reward.png)" in md
    assert yaml.safe_load(md.split("```yaml\n")[1].split("```")[0])["training"]["max_steps"] == 2


def test_resume_continues_the_evaluation_history(tiny_model_dir, tiny_data_file, tmp_path):
    overrides = {**RUN, "training.report_to": [], "training.save_every": 2}
    train(tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{**overrides, "training.max_steps": 2}))
    result = train(tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **overrides), resume=True)
    assert [h["step"] for h in result["evaluator"]["history"]] == [2, 4]  # step 2 came from the checkpoint
    assert [m["step"] for m in read_jsonl(tmp_path / "metrics.jsonl") if "eval/rougeL" in m] == [2, 4]
    assert sorted({r["step"] for r in read_jsonl(tmp_path / "completions.jsonl")}) == [2, 4]


def test_actor_critic_run_plots_the_value_loss_and_keeps_the_value_head(tiny_model_dir, tiny_data_file, tmp_path):
    train(tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{
        **RUN, "training.report_to": [], "algorithm.name": "actor_critic", "evaluation.log_completions_every": 0}))
    plots = {p.name for p in (tmp_path / "plots").glob("*.png")}
    assert {"value_loss.png", "explained_variance.png"} <= plots
    assert "![value loss](plots/value_loss.png)" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "best" / "value_head.safetensors").is_file() and (tmp_path / "best" / "best.json").is_file()


def test_report_and_model_card_name_unnamed_reward_components(run, tmp_path):
    """`{type: bleu}` and `{function: f.py:g}` are valid components without a name: it defaults to the type."""
    from llm_pg.config.schema import HubConfig
    from llm_pg.reporting.hub import model_card

    run_dir, _ = run
    copy = tmp_path / "unnamed"
    shutil.copytree(run_dir, copy)
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["reward"]["components"] = [{"type": "bleu"}, {"function": "f.py:g", "weight": 0.5}]
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    write_run_report(copy)
    assert "reward: 1.0 × bleu, 0.5 × function." in (copy / "report.md").read_text()
    card = str(model_card(copy, "someone/x", HubConfig()))
    assert "1.0·bleu + 0.5·function" in card


def test_hacking_check_reads_the_raw_training_reward_when_it_is_shaped():
    assert training_reward({"reward/mean": 0.0, "reward/raw": 0.7}) == 0.7  # normalized: mean ~0 every step
    assert training_reward({"reward/mean": 0.3}) == 0.3


def test_no_held_out_curve_without_validation_evaluations(run, tmp_path):
    """evaluation.eval_every = 0 logs no eval/ series: no held-out plot (before/after are in the changes plot)."""
    run_dir, _ = run
    copy = tmp_path / "no_validation"
    shutil.copytree(run_dir, copy)
    rows = [{k: v for k, v in r.items() if not k.startswith("eval/")} for r in read_jsonl(copy / "metrics.jsonl")]
    (copy / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    names = {p.name for p in write_run_report(copy)["plots"]}
    assert "heldout.png" not in names and "changes.png" in names
    assert "heldout.png" not in (copy / "report.md").read_text()
