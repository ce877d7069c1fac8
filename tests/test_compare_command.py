"""`llm-pg compare` (llm_pg/pipelines/compare.py, compare_report.py) run as a user runs it, and its statistics
against hand computation."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from helpers import assert_one_line_error, cli_main, run_cli, write_config_yaml
from llm_pg.evaluation.bootstrap import Difference, t_interval, t_quantile_975
from llm_pg.pipelines.compare_report import verdict

# --------------------------------------------------------------------------------------------- the statistics


def test_the_t_interval_is_the_textbook_one():
    mean, low, high = t_interval([1.0, 2.0, 3.0, 4.0])
    sd = math.sqrt(((1.5 ** 2) * 2 + (0.5 ** 2) * 2) / 3)  # divisor n - 1
    half = 3.182 * sd / 2  # t(0.975, 3) = 3.182, sqrt(4) = 2
    assert (mean, low, high) == pytest.approx((2.5, 2.5 - half, 2.5 + half), abs=1e-12)
    assert t_interval([0.3])[0] == 0.3 and math.isnan(t_interval([0.3])[1])
    assert t_quantile_975(1) == 12.706 and t_quantile_975(30) == 2.042
    assert t_quantile_975(60) == pytest.approx(2.000, abs=1e-3) and t_quantile_975(120) == pytest.approx(1.980,
                                                                                                         abs=1e-3)


def _d(difference, low, high) -> dict:
    return Difference("m", 0.0, difference, difference, low, high, 0.5).to_dict()


def test_the_verdict_reads_the_across_seed_interval_and_says_when_there_is_one_seed():
    two = {"per_seed": [_d(0.1, 0.05, 0.2), _d(0.3, 0.2, 0.4)], "mean": 0.2, "low": -1.07, "high": 1.47}
    assert verdict("rougeL", two, "shuffled_reward") == \
        "not distinguishable from shuffled_reward (t interval over 2 seeds)"  # every seed's own interval excludes 0
    clear = {**two, "low": 0.01, "high": 0.39}
    assert verdict("rougeL", clear, "c") == "distinguishable from c: better (t interval over 2 seeds)"
    assert verdict("perplexity", clear, "c") == "distinguishable from c: worse (t interval over 2 seeds)"
    assert verdict("length_words", clear, "c") == "distinguishable from c: higher (t interval over 2 seeds)"
    one = {"per_seed": [_d(-0.2, -0.3, -0.1)], "mean": -0.2, "low": None, "high": None}
    assert verdict("rougeL", one, "c") == \
        "distinguishable from c: worse (one seed: the within-seed bootstrap interval only)"


# ------------------------------------------------------------------------------------------------ the command

LENGTH_REWARD = ("def reward(prompts, completions, references, **columns):\n"
                 "    return [len(c) / 10 for c in completions]\n")


def compare(tmp_path, *args):
    return run_cli("compare", *args, cwd=tmp_path, timeout=600)


@pytest.fixture(scope="module")
def compared(tmp_path_factory, tiny_model_dir, tiny_data_file):
    tmp = tmp_path_factory.mktemp("compare")
    (tmp / "length.py").write_text(LENGTH_REWARD)
    config = write_config_yaml(tmp / "c.yaml", tiny_model_dir, tiny_data_file, tmp / "unused", **{
        "training.max_steps": 2, "algorithm.entropy_coef": 0.01, "data.max_eval_samples": 6,
        "reward.components": [{"name": "length", "function": f"{tmp / 'length.py'}:reward"}]})
    args = ["--config", config, "generation.max_new_tokens=5", "--output-dir", tmp / "cmp", "--seeds", 0, 1,
            "--controls", "shuffled_reward", "--arm", "fast", "training.learning_rate=0.03", "--resamples", 200]
    first = compare(tmp, *args)
    assert first.returncode == 0, first.stderr[-4000:]
    return tmp, args, first


def test_every_arm_and_seed_is_a_run_folder_and_the_report_is_written(compared):
    tmp, _, first = compared
    root = tmp / "cmp"
    for arm in ("config", "shuffled_reward", "fast"):
        for seed in (0, 1):
            run = root / arm / f"seed-{seed}"
            config = (run / "config.yaml").read_text()
            assert f"seed: {seed}" in config and (run / "final").is_dir() and (run / "eval_before.json").is_file()
            assert ("control: shuffled" in config) == (arm == "shuffled_reward")
            assert ("learning_rate: 0.03" in config) == (arm == "fast")
            assert "max_new_tokens: 5" in config  # the comparison's own overrides reach every arm
    report = (root / "report.md").read_text()
    assert "Against the control shuffled_reward" in report and (root / "report.html").is_file()
    assert "fast vs shuffled_reward, held-out reward:" in first.stdout and "fast vs config, held-out reward:" in \
        first.stdout and "config vs config" not in first.stdout
    assert "Against the config (eval_after of the arm - eval_after of config)" in report


def test_the_numbers_are_those_of_the_run_folders(compared):
    tmp, _, _ = compared
    root = tmp / "cmp"
    summary = json.loads((root / "compare.json").read_text())
    scores = {(arm, s): {name: json.loads((root / arm / f"seed-{s}" / f"{name}.json").read_text())["scores"]
                         for name in ("eval_before", "eval_after")} for arm in ("config", "shuffled_reward", "fast")
              for s in (0, 1)}
    for arm in ("config", "fast"):
        start = summary["arms"][arm]["vs_start"]["length_words"]
        per_seed = [scores[arm, s]["eval_after"]["length_words"] - scores[arm, s]["eval_before"]["length_words"]
                    for s in (0, 1)]
        assert [d["difference"] for d in start["per_seed"]] == pytest.approx(per_seed, abs=1e-9)
        control = summary["arms"][arm]["vs_control"]["shuffled_reward"]["length_words"]
        by_hand = [scores[arm, s]["eval_after"]["length_words"] - scores["shuffled_reward", s]["eval_after"][
            "length_words"] for s in (0, 1)]
        mean, sd = sum(by_hand) / 2, abs(by_hand[0] - by_hand[1]) / math.sqrt(2)
        assert control["mean"] == pytest.approx(mean, abs=1e-9)
        assert (control["low"], control["high"]) == pytest.approx((mean - 12.706 * sd / math.sqrt(2),
                                                                   mean + 12.706 * sd / math.sqrt(2)), abs=1e-9)
    assert summary["arms"]["shuffled_reward"]["vs_control"] == {}  # a control is not compared with itself
    by_hand = [scores["fast", s]["eval_after"]["length_words"] - scores["config", s]["eval_after"]["length_words"]
               for s in (0, 1)]  # a user's arm against the config, seed by seed
    vs_config = summary["arms"]["fast"]["vs_config"]["length_words"]
    assert [d["difference"] for d in vs_config["per_seed"]] == pytest.approx(by_hand, abs=1e-9)
    assert vs_config["mean"] == pytest.approx(sum(by_hand) / 2, abs=1e-9) and "from config" in vs_config["verdict"]
    assert "vs_config" not in summary["arms"]["config"] and "vs_config" not in summary["arms"]["shuffled_reward"]


def test_a_rerun_trains_nothing_and_a_lost_run_is_trained_again(compared):
    tmp, args, _ = compared
    root = tmp / "cmp"
    before = (root / "compare.json").read_text()
    again = compare(tmp, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("done; skipped") == 6 and "Loading weights" not in again.stderr
    assert (root / "compare.json").read_text() == before
    shutil.rmtree(root / "fast" / "seed-1")
    third = compare(tmp, *args)
    assert third.returncode == 0, third.stderr[-3000:]
    assert third.stderr.count("done; skipped") == 5 and "compare: arm fast, seed 1" in third.stderr
    assert json.loads((root / "compare.json").read_text()) == json.loads(before)  # the same run, trained again


def test_two_jobs_at_a_time_give_the_comparison_of_one_at_a_time(compared):
    """The comparison's folder with two of its runs lost: --jobs 2 trains both at once, to the same numbers."""
    tmp, args, _ = compared
    shutil.copytree(tmp / "cmp", tmp / "cmp_jobs")
    for lost in ("fast", "shuffled_reward"):
        shutil.rmtree(tmp / "cmp_jobs" / lost / "seed-1")
    parallel = [a if a != tmp / "cmp" else tmp / "cmp_jobs" for a in args] + ["--jobs", 2]
    result = compare(tmp, *parallel)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("done; skipped") == 4
    assert json.loads((tmp / "cmp_jobs" / "compare.json").read_text()) == \
        json.loads((tmp / "cmp" / "compare.json").read_text())  # the same runs, the same numbers
    logs = sorted(p.name for p in (tmp / "cmp_jobs" / "logs").iterdir())
    assert logs == ["fast-seed-1.log", "shuffled_reward-seed-1.log"]
    assert "eval_after" in (tmp / "cmp_jobs" / "logs" / "fast-seed-1.log").read_text()  # each run's own messages


def test_with_two_jobs_a_failed_run_is_one_line_naming_its_log_and_the_other_run_finishes(tiny_model_dir,
                                                                                       tiny_data_file, tmp_path):
    (tmp_path / "length.py").write_text(LENGTH_REWARD)
    config = write_config_yaml(tmp_path / "c.yaml", tiny_model_dir, tiny_data_file, tmp_path / "unused", **{
        "training.max_steps": 1, "data.max_eval_samples": 2,
        "reward.components": [{"name": "length", "function": f"{tmp_path / 'length.py'}:reward"}]})
    result = compare(tmp_path, "--config", config, "--output-dir", tmp_path / "cmp", "--seeds", 0, "--controls",
                     "none", "--arm", "broken", f"model.name_or_path={tmp_path / 'no_model'}", "--jobs", 2)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "compare: arm 'broken' seed 0 stopped",
                          f"its messages are in {tmp_path / 'cmp' / 'logs' / 'broken-seed-0.log'}")
    assert (tmp_path / "cmp" / "config" / "seed-0" / "eval_after.json").is_file()  # the run beside it finished
    assert not (tmp_path / "cmp" / "compare.json").exists()


def test_with_two_jobs_no_run_starts_after_a_failure(tiny_model_dir, tiny_data_file, tmp_path):
    """Four runs, two at a time: the config arm (its model folder missing) fails at once while the arm 'good' of seed
    0 trains; the two runs of seed 1, queued behind them, never start (no folder, no log), 'good' seed 0 finishes,
    and the failure is one line naming its log."""
    (tmp_path / "length.py").write_text(LENGTH_REWARD)
    config = write_config_yaml(tmp_path / "c.yaml", tiny_model_dir, tiny_data_file, tmp_path / "unused", **{
        "training.max_steps": 1, "data.max_eval_samples": 2,
        "reward.components": [{"name": "length", "function": f"{tmp_path / 'length.py'}:reward"}]})
    result = compare(tmp_path, "--config", config, f"model.name_or_path={tmp_path / 'no_model'}", "--output-dir",
                     tmp_path / "cmp", "--seeds", 0, 1, "--controls", "none", "--arm", "good",
                     f"model.name_or_path={tiny_model_dir}", "--jobs", 2)
    root = tmp_path / "cmp"
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "compare: arm 'config' seed 0 stopped",
                          f"its messages are in {root / 'logs' / 'config-seed-0.log'}")
    assert (root / "good" / "seed-0" / "eval_after.json").is_file()  # already training: it finished
    for arm in ("config", "good"):  # queued after the failure: never started
        assert not (root / arm / "seed-1").exists() and not (root / "logs" / f"{arm}-seed-1.log").exists()
    assert not (root / "compare.json").exists()


def test_another_plan_in_the_same_folder_is_refused(compared):
    tmp, args, _ = compared
    changed = [a if a != 1 else 2 for a in args]  # seeds 0 2
    result = compare(tmp, *changed)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "holds another comparison", "seeds")


@pytest.mark.parametrize("extra, message", [
    (["--arm", "bad", "training.learning_rate=-1"], "compare arm 'bad': training.learning_rate: must be > 0"),
    (["--arm", "config", "training.learning_rate=0.1"], "the arm names"),
    (["--arm", "lonely"], "compare --arm lonely: give its settings as KEY=VALUE"),
    (["--controls", "placebo"], "compare --controls: ['placebo'] unknown"),
    (["--jobs", "2", "training.num_threads=0"], "compare --jobs 2: set training.num_threads"),  # each on every core
    (["--jobs", "0"], "compare --jobs: 0 runs at a time; give 1 or more"),
])
def test_bad_arms_are_one_line_before_anything_trains(extra, message, tiny_model_dir, tiny_data_file, tmp_path):
    config = write_config_yaml(tmp_path / "c.yaml", tiny_model_dir, tiny_data_file, tmp_path / "unused")
    result = compare(tmp_path, "--config", config, "--output-dir", tmp_path / "cmp", *extra)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, message)
    assert not (tmp_path / "cmp").exists()


@pytest.mark.parametrize("extra, message", [
    (["--resamples", "0"], "compare --resamples: must be >= 1"),
    (["--output-dir", "FILE"], "compare --output-dir: {file} is a file; choose a folder"),
])
def test_bad_flags_are_one_line_before_anything_trains(extra, message, tiny_model_dir, tiny_data_file, tmp_path,
                                                        capsys):
    config = write_config_yaml(tmp_path / "c.yaml", tiny_model_dir, tiny_data_file, tmp_path / "unused")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine\n")
    extra = [str(a_file) if e == "FILE" else e for e in extra]
    assert cli_main("compare", "--config", str(config), "--output-dir", str(tmp_path / "cmp"), *extra) == 2
    assert_one_line_error(capsys.readouterr().err, message.format(file=a_file))
    assert not (tmp_path / "cmp").exists() and not (tmp_path / "unused").exists()
    assert a_file.read_text() == "mine\n"


def test_a_run_that_lost_its_final_policy_is_resumed_not_skipped(compared):
    """eval_after.json written but final/ missing (the disk filled while it was saved): a rerun resumes that run from
    its last checkpoint, writes final/ and gives the same comparison."""
    tmp, args, _ = compared
    root = tmp / "cmp"
    before = json.loads((root / "compare.json").read_text())
    shutil.rmtree(root / "config" / "seed-0" / "final")
    again = compare(tmp, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("done; skipped") == 5 and "compare: arm config, seed 0" in again.stderr
    assert (root / "config" / "seed-0" / "final" / "config.json").is_file()
    assert json.loads((root / "compare.json").read_text()) == before
