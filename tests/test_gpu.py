"""GPU checks (marker `gpu`): bf16 autocast, device placement, the CUDA RNG restored on resume, the KL reference on
another device. They skip without CUDA; `scripts/gpu_check.sh` runs them on a GPU machine (`pytest -m gpu`).

`LLM_PG_GPU_TESTS_ON_CPU=1` runs them on the CPU instead (what `scripts/gpu_check.sh --dry-run` does): the same
code paths with the CPU in place of the GPU (bf16 autocast exists on the CPU too), so the checks themselves are
tested on machines without a GPU; the tests that need two GPUs still skip.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from accelerate.state import AcceleratorState

from helpers import tiny_config

ON_CPU = os.environ.get("LLM_PG_GPU_TESTS_ON_CPU") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(DEVICE != "cuda" and not ON_CPU,
                                 reason="needs a CUDA GPU (LLM_PG_GPU_TESTS_ON_CPU=1 runs these checks on the CPU)")]


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """Accelerate's state is a process-wide singleton holding the device and the mixed precision: reset it around
    each test, so a test's ACCELERATE_MIXED_PRECISION takes effect and later tests choose their own."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def finite(metrics: dict) -> bool:
    return all(math.isfinite(v) for v in metrics.values())


def config_for(tiny_model_dir, tiny_data_file, run_dir, **overrides):
    return tiny_config(tiny_model_dir, tiny_data_file, run_dir, **{"generation.max_new_tokens": 8, **overrides})


def test_bf16_autocast_step_updates_fp32_weights(tiny_model_dir, tiny_data_file, tmp_path, monkeypatch):
    """ACCELERATE_MIXED_PRECISION=bf16 (what `accelerate launch --mixed_precision bf16` and
    configs/accelerate/single_gpu.yaml set): the update's matrix products run in bf16, the weights and AdamW stay
    fp32, and the step moves them by finite amounts."""
    from llm_pg.training.rl import setup_run, train_step

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    config = config_for(tiny_model_dir, tiny_data_file, tmp_path, **{"training.mixed_precision": "auto"})
    run = setup_run(config)
    assert run.accelerator.mixed_precision == "bf16" and run.accelerator.device.type == DEVICE
    seen = set()
    layer = run.accelerator.unwrap_model(run.model).model.layers[0].mlp.down_proj
    hook = layer.register_forward_hook(lambda module, args, out: seen.add(out.dtype))
    before = {n: p.detach().clone() for n, p in run.model.named_parameters()}
    metrics = [train_step(config, run, step) for step in range(2)]
    hook.remove()
    assert torch.bfloat16 in seen, seen  # autocast was on in the update's forward pass
    assert all(finite(m) and m["train/skipped_update"] == 0 for m in metrics), metrics
    assert all(p.dtype == torch.float32 and p.device.type == DEVICE for p in run.model.parameters())
    changed = [n for n, p in run.model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert len(changed) == len(before)


def test_bf16_weights_step(tiny_model_dir, tiny_data_file, tmp_path):
    """model.dtype=bfloat16: the weights themselves in bf16 (half the memory); a step is finite and moves them."""
    from llm_pg.training.rl import setup_run, train_step

    config = config_for(tiny_model_dir, tiny_data_file, tmp_path, **{"model.dtype": "bfloat16"})
    run = setup_run(config)
    assert all(p.dtype == torch.bfloat16 and p.device.type == DEVICE for p in run.model.parameters())
    before = [p.detach().clone() for p in run.model.parameters()]
    metrics = [train_step(config, run, step) for step in range(2)]  # the tiny run's first step has equal rewards
    assert all(finite(m) and m["train/skipped_update"] == 0 for m in metrics), metrics
    assert metrics[1]["policy/grad_norm"] > 0
    assert any(not torch.equal(p.detach(), b) for p, b in zip(run.model.parameters(), before))


def test_policy_value_head_reference_and_optimizer_state_on_the_device(tiny_model_dir, tiny_data_file, tmp_path):
    from llm_pg.training.rl import setup_run, train_step

    config = config_for(tiny_model_dir, tiny_data_file, tmp_path, **{"kl.coef": 0.05, "algorithm.name": "actor_critic"})
    run = setup_run(config)
    device = run.accelerator.device
    assert device.type == DEVICE
    policy = run.accelerator.unwrap_model(run.model)
    assert {p.device for p in policy.parameters()} == {device}
    assert {p.device for p in policy.value_head.parameters()} == {device}
    assert {p.device for p in run.reference.model.parameters()} == {device}  # kl.reference_device: same
    metrics = train_step(config, run, 0)
    assert finite(metrics) and metrics["policy/kl"] >= 0, metrics
    states = [s for s in run.optimizer.state.values() if "exp_avg" in s]
    assert states and {s["exp_avg"].device for s in states} == {device}


def reference_devices():
    two_gpus = torch.cuda.device_count() >= 2
    return ["cpu", pytest.param("cuda:1", marks=pytest.mark.skipif(not two_gpus, reason="needs 2 GPUs"))]


@pytest.mark.parametrize("place", reference_devices())
def test_reference_on_another_device(tiny_model_dir, tiny_data_file, tmp_path, place):
    """kl.reference_device: the frozen reference on the CPU (frees GPU memory) or a second GPU; its log-probs come
    back to the policy's device and the KL matches the reference on the policy's own device."""
    from llm_pg.training.rl import setup_run, train_step

    results = {}
    for where in ("same", place):
        AcceleratorState._reset_state(reset_partial_state=True)
        config = config_for(tiny_model_dir, tiny_data_file, tmp_path / where.replace(":", "_"),
                            **{"kl.coef": 0.05, "kl.reference_device": where})
        run = setup_run(config)
        expected = run.accelerator.device if where == "same" else torch.device(where)
        assert {p.device for p in run.reference.model.parameters()} == {expected}
        results[where] = train_step(config, run, 0)
    assert finite(results[place])
    same_kl = results["same"]["policy/kl"]
    assert results[place]["policy/kl"] == pytest.approx(same_kl, rel=1e-3, abs=1e-4)  # CPU and GPU kernels differ
    assert results[place]["reward/mean"] == results["same"]["reward/mean"]  # the same seed samples the same


def test_resume_restores_the_device_rng(tiny_model_dir, tiny_data_file, tmp_path):
    """Sampling on a GPU draws from the CUDA generator: a checkpoint stores it and --resume restores it, so the
    resumed steps sample exactly the completions of an uninterrupted run."""
    from llm_pg.runs.checkpoint import checkpoint_dir
    from llm_pg.training.rl import setup_run, train

    overrides = {"training.max_steps": 4, "training.save_every": 2, "evaluation.log_completions_every": 1,
                 "generation.temperature": 1.0, "training.save_final_model": False}
    straight = config_for(tiny_model_dir, tiny_data_file, tmp_path / "straight", **overrides)
    train(straight)
    AcceleratorState._reset_state(reset_partial_state=True)
    halted = config_for(tiny_model_dir, tiny_data_file, tmp_path / "resumed", **{**overrides, "training.max_steps": 2})
    train(halted)

    saved = torch.load(checkpoint_dir(tmp_path / "resumed", 2) / "rng.pt", weights_only=True)
    assert ("cuda" in saved) == (DEVICE == "cuda")
    AcceleratorState._reset_state(reset_partial_state=True)
    resumed = config_for(tiny_model_dir, tiny_data_file, tmp_path / "resumed", **overrides)
    setup_run(resumed, resume=True)
    if DEVICE == "cuda":
        assert torch.equal(torch.cuda.get_rng_state(), saved["cuda"][0])
    assert torch.equal(torch.get_rng_state(), saved["torch"])

    AcceleratorState._reset_state(reset_partial_state=True)
    train(resumed, resume=True)

    def rows(run_dir):
        return [json.loads(line) for line in (run_dir / "completions.jsonl").read_text().splitlines()]

    late = lambda rs: [(r["step"], r["completion"]) for r in rs if r["step"] > 2]  # noqa: E731
    assert late(rows(tmp_path / "resumed")) == late(rows(tmp_path / "straight"))
    assert len(late(rows(tmp_path / "straight"))) == 2 * 4  # steps 3-4, 2 prompts x 2 samples
