"""Mixed precision (llm_pg/models/precision.py, training.mixed_precision): bf16 compute, float32 weights and losses."""

from __future__ import annotations

import pytest
import torch

from helpers import assert_one_line_error, run_cli, tiny_config, write_config_yaml
from llm_pg.models import precision
from llm_pg.models.policy import load_policy
from llm_pg.rollout.sampling import score_tokens
from llm_pg.training.rl import setup_run, train_step

FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512bw {extra} xsave\n"


@pytest.mark.parametrize("extra,native", [("avx512_bf16", True), ("amx_bf16 amx_tile", True), ("avx2", False)])
def test_native_bf16_is_read_from_the_cpu_flags(extra, native):
    assert precision.cpu_has_native_bf16(FLAGS.format(extra=extra)) is native
    assert precision.cpu_has_native_bf16("") is False  # no /proc/cpuinfo (not Linux): assume emulated


def test_auto_follows_the_launcher_else_float32(monkeypatch):
    assert precision.resolve_mixed_precision("no") == "no"
    assert precision.resolve_mixed_precision("bf16") == "bf16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # accelerate launch --mixed_precision bf16
    assert precision.resolve_mixed_precision("auto") == "bf16"
    assert precision.resolve_mixed_precision("no") == "no"  # an explicit choice wins over the launcher
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    assert precision.resolve_mixed_precision("auto") == "no"


def test_a_bf16_step_keeps_float32_weights_and_losses(tiny_model_dir, tiny_data_file, tmp_path):
    (tmp_path / "length.py").write_text("def reward(prompts, completions, references, **columns):\n"
                                        "    return [len(c) / 10 for c in completions]\n")
    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{
        "training.mixed_precision": "bf16", "algorithm.name": "actor_critic",
        "reward.components": [{"name": "length", "function": f"{tmp_path / 'length.py'}:reward"}]})
    run = setup_run(config)
    assert run.accelerator.mixed_precision == "bf16"
    # the forward really runs in bf16 (against the same weights in float32), and what leaves it is float32
    prompt = torch.tensor([[1, 5, 6]]), torch.ones(1, 3, dtype=torch.long)
    completion = torch.tensor([[7, 8]]), torch.ones(1, 2, dtype=torch.long)
    with run.accelerator.autocast():
        scores = score_tokens(run.model, *prompt, *completion, with_values=True)
    assert scores.logprobs.dtype == torch.float32 and scores.values.dtype == torch.float32
    with torch.no_grad():
        fp32 = score_tokens(load_policy(config.model), *prompt, *completion).logprobs
    assert not torch.equal(scores.logprobs.detach(), fp32)  # bf16 rounding shows: autocast was on
    torch.testing.assert_close(scores.logprobs.detach(), fp32, atol=0.1, rtol=0.05)

    before = {n: p.detach().clone() for n, p in run.model.named_parameters()}
    metrics = train_step(config, run, 0)
    assert metrics["train/skipped_update"] == 0.0  # finite loss and gradients
    assert all(v == v for k, v in metrics.items() if k != "value/explained_variance")  # (NaN when R is constant)
    assert [n for n, p in run.model.named_parameters() if not torch.equal(before[n], p)]  # it trained
    assert {p.dtype for p in run.model.parameters()} == {torch.float32}  # master weights stay float32
    states = [s for state in run.optimizer.state.values() for s in state.values() if torch.is_tensor(s) and s.ndim]
    assert states and {s.dtype for s in states} == {torch.float32}


def test_ppo_ratio_is_exactly_one_on_the_first_minibatch_in_bf16(tiny_model_dir, tiny_data_file, tmp_path):
    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{
        "training.mixed_precision": "bf16", "algorithm.name": "ppo", "ppo.num_minibatches": 1})
    run = setup_run(config)
    metrics = train_step(config, run, 0)
    assert metrics["ppo/clip_frac"] == 0.0  # the first minibatch's ratio is 1 (later ones are averaged in)
    assert metrics["ppo/approx_kl"] >= 0.0


def test_mixed_precision_no_survives_yaml():
    """YAML reads `no` as false; `training.mixed_precision: no` (Accelerate's spelling) must still mean no."""
    from llm_pg.config.schema import config_from_dict, merge_overrides
    from llm_pg.errors import ConfigError

    base = {"model": {"name_or_path": "x"}}
    assert config_from_dict(merge_overrides(base, ["training.mixed_precision=no"])).training.mixed_precision == "no"
    with pytest.raises(ConfigError, match="training.mixed_precision: choose one of"):
        config_from_dict(merge_overrides({"model": {"name_or_path": "x"}}, ["training.mixed_precision=yes"]))


def test_fp16_on_a_cpu_is_one_line(tiny_model_dir, tiny_data_file, tmp_path):
    config = write_config_yaml(tmp_path / "c.yaml", tiny_model_dir, tiny_data_file, tmp_path / "run")
    result = run_cli("train", "--config", config, "training.mixed_precision=fp16", cwd=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "training.mixed_precision", "bf16")
    assert not (tmp_path / "run").exists()  # refused before anything was written
