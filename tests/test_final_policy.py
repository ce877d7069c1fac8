"""final/ is the policy that validation chose (evaluation.final_policy), and early stopping on validation.

The tiny runs below train with a large learning rate and pick the best policy by perplexity under the starting
model (lower is better): every update moves the policy away from the start, so the first evaluation is the best
and the last policy differs from it.  Each test states that precondition before asserting anything.

The runs call `llm_pg.cli.main` in-process (helpers.cli_main: the console script's code path, argv to exit code):
what is tested is which policy a run ships, not the process around it, and a subprocess would pay ~4 s of imports
per run. The real `llm-pg train` and `llm-pg eval` processes are tested in tests/test_cli.py.
"""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from helpers import cli_main, write_config_yaml, write_tiny_data

DRIFT = {"training.max_steps": 4, "training.learning_rate": 0.05, "evaluation.eval_every": 1,
         "evaluation.metric": "perplexity", "evaluation.after_training": True,
         "evaluation.before_training": True, "evaluation.bootstrap_resamples": 20,
         "data.max_eval_samples": 6}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_model_dir):
    """The session's tiny model (save_tiny_model, built once per worker) and 40 rows of data."""
    return tiny_model_dir, write_tiny_data(tmp_path_factory.mktemp("final_policy") / "data.jsonl", n=40)


def train(tmp_path, tiny, **overrides):
    model, data = tiny
    config = write_config_yaml(tmp_path / "c.yaml", model, data, tmp_path / "run", **{**DRIFT, **overrides})
    assert cli_main("train", "--config", config) == 0
    return tmp_path / "run"


def weights(folder, name="model.safetensors"):
    return load_file(folder / name)


def history(run):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "eval/perplexity" in r]


@pytest.mark.parametrize("variant", ["full", "value_head", "lora"])
def test_final_is_the_best_validation_policy_and_eval_after_scores_it(tmp_path, tiny, variant):
    extra = {"value_head": {"algorithm.name": "actor_critic"}, "lora": {"model.lora.r": 2}, "full": {}}[variant]
    run = train(tmp_path, tiny, **extra)
    best = json.loads((run / "best" / "best.json").read_text())
    assert best["step"] < 4, "precondition: the best validation policy is not the last one"
    selected = json.loads((run / "final" / "selected.json").read_text())
    assert selected["policy"] == "best" and selected["step"] == best["step"] and selected["last_step"] == 4
    name = "adapter_model.safetensors" if variant == "lora" else "model.safetensors"
    final, chosen, last = weights(run / "final", name), weights(run / "best", name), \
        weights(run / "checkpoints" / "step-000004" / "model", name)
    assert final.keys() == chosen.keys()
    assert all((final[k] == chosen[k]).all() for k in final)  # bit-identical to best/
    assert any((final[k] != last[k]).any() for k in final)  # and not the last step's policy
    if variant == "value_head":
        head = weights(run / "final", "value_head.safetensors")
        assert all((head[k] == weights(run / "best", "value_head.safetensors")[k]).all() for k in head)
    # eval_after.json is the best policy's test score: `llm-pg eval` of best/ gives the same numbers
    after = json.loads((run / "eval_after.json").read_text())["scores"]
    last_scores = json.loads((run / "eval_last.json").read_text())["scores"]
    assert cli_main("eval", "--config", run / "config.yaml", "--model", run / "best", "--output",
                    tmp_path / "best_eval.json") == 0
    direct = json.loads((tmp_path / "best_eval.json").read_text())["scores"]
    for metric in ("rougeL", "bleu", "perplexity", "length_tokens"):
        assert after[metric] == pytest.approx(direct[metric], abs=1e-9), metric
    assert (after["perplexity"], after["length_tokens"]) != (last_scores["perplexity"], last_scores["length_tokens"])
    report = (run / "report.md").read_text()
    assert f"step {best['step']} of 4" in report and "| last policy |" in report


def test_final_policy_last_keeps_the_last_step(tmp_path, tiny):
    run = train(tmp_path, tiny, **{"evaluation.final_policy": "last"})
    assert json.loads((run / "best" / "best.json").read_text())["step"] < 4, "precondition"
    final, last = weights(run / "final"), weights(run / "checkpoints" / "step-000004" / "model")
    assert all((final[k] == last[k]).all() for k in final)
    assert json.loads((run / "final" / "selected.json").read_text()) == {"policy": "last", "step": 4}
    assert not (run / "eval_last.json").exists()


def test_a_best_validation_policy_at_the_last_step_is_shipped_and_reported_as_the_best(tmp_path, tiny):
    run = train(tmp_path, tiny, **{"evaluation.eval_every": 4})  # one validation, at the last step: best == last
    best = json.loads((run / "best" / "best.json").read_text())
    selected = json.loads((run / "final" / "selected.json").read_text())
    assert (selected["policy"], selected["step"], selected["last_step"]) == ("best", 4, 4)
    assert selected["value"] == best["value"] and not (run / "eval_last.json").exists()
    assert "The last step's policy is that best one." in (run / "report.md").read_text()


def test_early_stopping_ends_the_run_after_patience_evaluations_without_a_new_best(tmp_path, tiny):
    patience = 2
    run = train(tmp_path, tiny, **{"training.max_steps": 8, "evaluation.early_stopping_patience": patience})
    evals = history(run)
    values, steps = [r["eval/perplexity"] for r in evals], [r["step"] for r in evals]
    assert steps == list(range(1, len(steps) + 1))  # evaluated every step until it stopped
    assert len(steps) < 8, f"precondition: validation stopped improving ({values})"
    # by hand: the run must end at the first evaluation that is `patience` evaluations after the best so far
    best, since = values[0], 0
    for k, v in enumerate(values[1:], start=1):
        best, since = (v, 0) if v < best else (best, since + 1)
        if since == patience:
            assert k == len(values) - 1, f"should have stopped at step {k + 1}: {values}"
    assert since == patience, f"stopped without spending the patience: {values}"
    best_step = steps[values.index(min(values))]
    assert json.loads((run / "final" / "selected.json").read_text())["step"] == best_step
    assert max(json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()) == steps[-1]


def test_a_best_policy_saved_after_the_checkpoint_is_never_shipped_after_a_resume(tmp_path, tiny, caplog):
    """A crash after best/ was rewritten by a step the checkpoint does not have: the resumed run must not ship that
    policy under the checkpoint's best step (issue 23). Here best/ is planted as a lost step 3 would leave it: the
    step-1 policy (not the best one), labelled step 3."""
    import shutil

    model, data = tiny
    config = write_config_yaml(tmp_path / "c.yaml", model, data, tmp_path / "run",
                               **{**DRIFT, "training.max_steps": 2, "training.save_every": 1,
                                  "training.keep_checkpoints": 5})
    assert cli_main("train", "--config", config) == 0
    run = tmp_path / "run"
    best_step = json.loads((run / "best" / "best.json").read_text())["step"]
    shutil.rmtree(run / "final")  # as if the run had crashed after its step-2 checkpoint...
    shutil.rmtree(run / "best")  # ...and a step 3 had saved its policy to best/ before dying
    shutil.copytree(run / "checkpoints" / f"step-00000{3 - best_step}" / "model", run / "best")
    (run / "best" / "best.json").write_text(json.dumps({"step": 3, "metric": "perplexity", "value": 1.0}))
    planted = weights(run / "best")

    caplog.clear()  # the resumed run's messages only
    assert cli_main("train", "--config", config, "--resume", "training.max_steps=4") == 0
    values = {r["step"]: r["eval/perplexity"] for r in history(run)}
    assert min(values[3], values[4]) > values[best_step], f"precondition: nothing beats step {best_step} ({values})"
    assert not (run / "best").exists()  # the checkpoint's best was overwritten and nothing later beat it
    assert json.loads((run / "final" / "selected.json").read_text()) == {"policy": "last", "step": 4}
    final = weights(run / "final")
    assert any((final[k] != planted[k]).any() for k in final)
    assert "held the policy of step 3, which the checkpoint does not know of" in caplog.text
