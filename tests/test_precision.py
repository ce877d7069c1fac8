"""Mixed precision (llm_pg/models/precision.py, training.mixed_precision): bf16 compute, float32 weights and losses,
in RL, SFT and `llm-pg rm` alike (llm_pg/training/setup.py)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from helpers import assert_one_line_error, cli_main, tiny_config, write_config_yaml
from llm_pg.config.schema import config_from_dict
from llm_pg.models import precision
from llm_pg.models import reward_model as rm_model
from llm_pg.models.policy import load_policy
from llm_pg.rollout.sampling import completion_outputs
from llm_pg.training.rl import setup_run, train_step
from test_run_contract import rm_values, write_yaml

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
        scores = completion_outputs(run.model, *prompt, *completion, with_values=True)
    assert scores.logprobs.dtype == torch.float32 and scores.values.dtype == torch.float32
    with torch.no_grad():
        fp32 = completion_outputs(load_policy(config.model), *prompt, *completion).logprobs
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


@pytest.mark.parametrize("command", ["train", "sft", "rm"])
def test_fp16_on_a_cpu_is_one_line(command, tiny_model_dir, tiny_data_file, tmp_path, capsys):
    """In-process (helpers.cli_main): the refusal, not the process, is tested; each command's real process is
    tested in tests/test_cli.py, tests/test_data_formats.py and tests/test_rm_training.py."""
    if command == "rm":
        config = write_yaml(tmp_path / "c.yaml", rm_values(tmp_path, tiny_model_dir, tmp_path / "run"))
    else:
        config = write_config_yaml(tmp_path / "c.yaml", tiny_model_dir, tiny_data_file, tmp_path / "run",
                                   **{"sft.output_dir": str(tmp_path / "run")})
    assert cli_main(command, "--config", config, "training.mixed_precision=fp16") == 2
    assert_one_line_error(capsys.readouterr().err, "training.mixed_precision: fp16 needs a GPU", "bf16")
    assert not (tmp_path / "run").exists()  # refused before anything was written


def recording_linear_dtypes(model, seen: list):
    """`model` with a hook on its first Linear: every forward appends (training mode, the output's dtype), which is
    bfloat16 under bf16 autocast and float32 without it."""
    linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda module, args, output: seen.append((module.training, output.dtype)))
    return model


def changed_float32_weights(folder, base_folder) -> list[str]:
    """The names of the saved weights that differ from the base model's; every saved weight must be float32."""
    weights, base = load_file(folder / "model.safetensors"), load_file(base_folder / "model.safetensors")
    assert {w.dtype for w in weights.values()} == {torch.float32}
    return [name for name in base if name in weights and not torch.equal(weights[name], base[name])]


# bf16 first: run in this order, the float32 case also shows that a run does not keep the precision of an earlier
# run in the same process (Accelerate's state is process-wide, and a bare Accelerator() inherits it)
@pytest.mark.parametrize("mixed, computed", [("bf16", torch.bfloat16), ("no", torch.float32)])
def test_sft_computes_in_the_configured_precision_over_float32_weights(mixed, computed, tiny_model_dir,
                                                                       tiny_data_file, tmp_path, monkeypatch):
    from llm_pg.training import sft

    seen = []
    monkeypatch.setattr(sft, "load_policy", lambda model_config: recording_linear_dtypes(load_policy(model_config),
                                                                                         seen))
    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path / "rl", **{
        "training.mixed_precision": mixed, "sft.max_steps": 2, "sft.learning_rate": 1e-2})
    final = sft.train_sft(config, tmp_path / "sft")
    assert [dtype for _, dtype in seen] == [computed] * 2  # one forward per step, in the configured precision
    assert changed_float32_weights(final, tiny_model_dir)  # float32 master weights, and they trained
    log = (tmp_path / "sft" / "sft_metrics.jsonl").read_text().splitlines()
    losses = [json.loads(line)["sft/loss"] for line in log]
    assert len(losses) == 2 and all(loss == loss for loss in losses)


@pytest.mark.parametrize("mixed, computed", [("bf16", torch.bfloat16), ("no", torch.float32)])
def test_reward_model_computes_in_the_configured_precision_over_float32_weights(mixed, computed, tiny_model_dir,
                                                                                tmp_path, monkeypatch):
    """Training forwards run in the configured precision; the normalization statistics are scored in float32, as
    `type: reward_model` scores the completions in RL (outside autocast, float32 weights)."""
    from llm_pg.training.reward_model import train_reward_model

    seen, load_model = [], rm_model.load_model
    monkeypatch.setattr(rm_model, "load_model", lambda *args, **kwargs: recording_linear_dtypes(
        load_model(*args, **kwargs), seen))
    values = rm_values(tmp_path, tiny_model_dir, tmp_path / "rm")
    values["training"]["mixed_precision"] = mixed
    train_reward_model(config_from_dict(values))
    assert [dtype for training, dtype in seen if training] == [computed] * 2  # 2 steps: one forward each
    assert {dtype for training, dtype in seen if not training} == {torch.float32}
    assert changed_float32_weights(tmp_path / "rm" / "final", tiny_model_dir)


def test_rm_command_in_bf16_differs_from_float32_by_rounding_only(tiny_model_dir, tmp_path):
    """`llm-pg rm` with training.mixed_precision=bf16: the first step's loss (the same weights and pairs) differs from
    a float32 run's by bf16 rounding, and the saved weights are float32. Both runs in-process (helpers.cli_main; one
    process switching precision is what training/setup.py make_accelerator handles); the rm process is tested in
    tests/test_rm_training.py."""
    first_loss = {}
    for mixed in ("bf16", "no"):  # bf16 first: this process's Accelerate state is left in float32, as it found it
        folder = tmp_path / mixed
        config = write_yaml(tmp_path / f"{mixed}.yaml", rm_values(tmp_path, tiny_model_dir, folder))
        assert cli_main("rm", "--config", config, f"training.mixed_precision={mixed}") == 0
        first_loss[mixed] = json.loads((folder / "rm_metrics.jsonl").read_text().splitlines()[0])["rm/loss"]
        assert changed_float32_weights(folder / "final", tiny_model_dir)
    assert first_loss["bf16"] != first_loss["no"]
    assert first_loss["bf16"] == pytest.approx(first_loss["no"], abs=0.05)
