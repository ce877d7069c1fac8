"""Memory options: gradient checkpointing (same gradients, really recomputed, only in the update), the KL reference on
another device, no reference without a KL term, and the dtype warning."""

from __future__ import annotations

import logging

import pytest
import torch

import llm_pg.training.rl

from helpers import TINYSTORIES, assert_one_line_error, requires_tinystories, tiny_config, write_config_yaml
from llm_pg.cli import main
from llm_pg.config.schema import GenerationConfig
from llm_pg.errors import ConfigError
from llm_pg.models.memory import checkpointing_active, enable_gradient_checkpointing, update_mode
from llm_pg.models.policy import load_policy, load_tokenizer
from llm_pg.rollout.sampling import completion_logprobs, sample, completion_outputs
from llm_pg.training.rl import setup_run, train_step

K = 2


@pytest.fixture(scope="module")
def batch(tiny_model_dir):
    """A fixed rollout of 3 prompts x K samples from the tiny model (prompts of different lengths: left padding)."""
    from helpers import SUBJECTS, VERBS

    tokenizer = load_tokenizer(tiny_config(tiny_model_dir, "x.jsonl", "out").model)
    model = load_policy(tiny_config(tiny_model_dir, "x.jsonl", "out").model).eval()
    prompts = [tokenizer(f"{s} {v}")["input_ids"] for s, v in zip(SUBJECTS[:3], VERBS[2:5])]
    torch.manual_seed(0)
    r = sample(model, tokenizer, prompts, GenerationConfig(num_samples=K, max_new_tokens=6))
    return r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask


def gradients_and_mlp_calls(model, batch, group_size: int) -> tuple[dict[str, torch.Tensor], int]:
    """d(sum of log pi(a_t|s_t))/d(theta) inside update_mode, and how many times the decoder layers ran.

    A layer's run is counted when its attention starts (a pre-hook): the recompute stops as soon as it has rebuilt
    what backward needs (torch.utils.checkpoint's early stop), so a hook at the end of a submodule can miss it.
    """
    calls = []
    hooks = [layer.self_attn.register_forward_pre_hook(lambda *_: calls.append(1)) for layer in model.model.layers]
    model.zero_grad(set_to_none=True)
    with update_mode(model):
        completion_outputs(model, *batch, group_size=group_size).logprobs.sum().backward()
    for hook in hooks:
        hook.remove()
    return {name: p.grad.clone() for name, p in model.named_parameters()}, len(calls)


@pytest.mark.parametrize("group_size", [1, K])
def test_gradient_checkpointing_recomputes_the_layers_and_gives_the_same_gradients(group_size, tiny_model_dir, batch):
    plain = load_policy(tiny_config(tiny_model_dir, "x.jsonl", "out").model).eval()
    checkpointed = load_policy(tiny_config(tiny_model_dir, "x.jsonl", "out").model).eval()
    enable_gradient_checkpointing(checkpointed)
    expected, plain_calls = gradients_and_mlp_calls(plain, batch, group_size)
    got, checkpointed_calls = gradients_and_mlp_calls(checkpointed, batch, group_size)
    layers = len(plain.model.layers)
    # plain: one forward per layer (two with the shared prompt pass); checkpointed: the whole sequences once (the
    # KV cache the shared prompt pass needs is dropped by checkpointed layers), then each layer again in backward
    assert plain_calls == layers * (2 if group_size > 1 else 1)
    assert checkpointed_calls == 2 * layers
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_checkpointing_acts_only_inside_the_update_and_leaves_dropout_off(tiny_model_dir, batch):
    model = load_policy(tiny_config(tiny_model_dir, "x.jsonl", "out").model).eval()
    enable_gradient_checkpointing(model)
    assert not checkpointing_active(model)
    with torch.no_grad():  # outside the update: generation and scoring keep the shared prompt pass and its cache
        before, _ = completion_logprobs(model, *batch, group_size=K)
    with update_mode(model):
        assert checkpointing_active(model)
        assert all(layer.training for layer in model.model.layers)
        assert not any(m.training for layer in model.model.layers for m in layer.modules() if m is not layer)
        assert not model.training and not model.model.layers[0].self_attn.training  # attention dropout stays off
    assert not checkpointing_active(model) and not any(m.training for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(completion_logprobs(model, *batch, group_size=K)[0], before, atol=0, rtol=0)


def test_lora_with_gradient_checkpointing_trains_the_adapters_and_recomputes(tiny_model_dir, tiny_data_file, tmp_path):
    pytest.importorskip("peft")
    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{
        "model.lora.r": 4, "training.gradient_checkpointing": True, "kl.coef": 0.1})
    run = setup_run(config)
    layers = run.model.get_base_model().model.layers
    calls = []
    hooks = [layer.self_attn.register_forward_pre_hook(lambda *_: calls.append(1)) for layer in layers]
    adapters = {n: p.detach().clone() for n, p in run.model.named_parameters() if ".lora_B." in n}
    lengths, real_sample = [], llm_pg.training.rl.sample  # T: decoding stops once every completion has ended

    def recording_sample(*args, **kwargs):
        rollout = real_sample(*args, **kwargs)
        lengths.append(rollout.completion_ids.shape[1])
        return rollout

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(llm_pg.training.rl, "sample", recording_sample)
        train_step(config, run, 0)
    for hook in hooks:
        hook.remove()
    assert all(not torch.equal(adapters[n], p) for n, p in run.model.named_parameters() if n in adapters)
    # sampling: 1 shared prompt pass + T decoding steps; reference: 2 (shared prompt pass); update: 1 + 1 recompute
    assert len(calls) == len(layers) * (1 + lengths[0] + 2 + 2)


def test_the_reference_on_another_device_gives_the_same_kl(tiny_model_dir, tiny_data_file, tmp_path):
    metrics = {}
    for device in ("same", "cpu"):
        config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path / device, **{
            "kl.coef": 0.1, "kl.reference_device": device})
        run = setup_run(config)
        assert run.reference.model is not run.model and not run.reference.adapters_off
        assert next(run.reference.model.parameters()).device == torch.device("cpu")
        metrics[device] = [train_step(config, run, step) for step in range(2)]
    assert metrics["cpu"][1]["policy/kl"] != 0.0
    assert [m["policy/kl"] for m in metrics["cpu"]] == [m["policy/kl"] for m in metrics["same"]]


def test_no_reference_model_is_loaded_without_a_kl_term(tiny_model_dir, tiny_data_file, tmp_path, monkeypatch):
    import llm_pg.training.rl

    loaded = []
    monkeypatch.setattr(llm_pg.training.rl, "load_reference", lambda *a, **k: loaded.append(1) or "reference")
    run = setup_run(tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{"kl.coef": 0.0}))
    assert run.reference is None and not loaded
    assert setup_run(tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{"kl.coef": 0.1})).reference == "reference"
    assert loaded == [1]
    assert sum(p.numel() for p in run.model.parameters()) == sum(
        p.numel() for p in load_policy(tiny_config(tiny_model_dir, "x.jsonl", "out").model).parameters())


def test_a_reference_device_that_is_not_a_device_is_a_one_line_error(tiny_model_dir, tiny_data_file, tmp_path,
                                                                     capsys):
    config_yaml = write_config_yaml(tmp_path / "c.yaml", tiny_model_dir, tiny_data_file, tmp_path / "run")
    assert main(["train", "--config", str(config_yaml), "kl.coef=0.1", "kl.reference_device=gpu1"]) == 2
    assert_one_line_error(capsys.readouterr().err, "kl.reference_device:", "gpu1")


@pytest.mark.skipif(torch.cuda.device_count() > 1, reason="cuda:1 exists here")
def test_a_reference_device_this_machine_lacks_fails_at_setup_naming_the_field(tiny_model_dir, tiny_data_file,
                                                                               tmp_path):
    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{"kl.coef": 0.1, "kl.reference_device": "cuda:1"})
    with pytest.raises(ConfigError, match=r"^kl\.reference_device: cannot place the reference model on cuda:1"):
        setup_run(config)


def test_bfloat16_on_the_cpu_trains_with_a_warning(tiny_model_dir, tiny_data_file, tmp_path, caplog):
    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{"model.dtype": "bfloat16"})
    with caplog.at_level(logging.WARNING):
        run = setup_run(config)
    assert "model.dtype=bfloat16 keeps the weights themselves in 16 bits" in caplog.text
    assert next(run.model.parameters()).dtype == torch.bfloat16
    assert train_step(config, run, 0)["train/skipped_update"] == 0.0


def test_the_perplexity_model_is_loaded_for_each_evaluation_and_freed_after(tiny_model_dir, tiny_data_file, tmp_path,
                                                                           monkeypatch):
    """Without a KL reference the starting policy that scores perplexity is not held through the updates: each
    evaluation loads it and drops it; its perplexity is the starting policy's."""
    import gc
    import weakref

    import llm_pg.models.policy
    from llm_pg.evaluation.heldout import evaluate_split
    from llm_pg.evaluation.periodic import TrainingEvaluator

    loaded, real_load = [], llm_pg.models.policy.load_policy
    monkeypatch.setattr(llm_pg.models.policy, "load_policy",
                        lambda *a, **k: (m := real_load(*a, **k)) and loaded.append(weakref.ref(m)) or m)
    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{"kl.coef": 0.0,
                                                                      "evaluation.after_training": True})
    run = setup_run(config)
    loaded.clear()  # the policy itself
    evaluator = TrainingEvaluator(config, run)
    assert evaluator.reference is None and loaded == []  # nothing held between evaluations
    first = evaluator.evaluate_test("eval_after")
    gc.collect()
    assert len(loaded) == 1 and loaded[0]() is None  # loaded for the evaluation, gone after it
    # the policy has not moved: it is its own starting point, so it must give the same perplexity as the loaded copy
    same, _ = evaluate_split(config, run.model, run.tokenizer, run.test_examples, evaluator.reward_mix, run.model)
    assert first["perplexity"] == same["perplexity"] > 1.0
    evaluator.evaluate_test("eval_after")
    assert len(loaded) == 2


@requires_tinystories
def test_loading_the_perplexity_model_leaves_the_random_stream_alone(tiny_data_file, tmp_path):
    """Building tinystories (tied embeddings) draws from torch's RNG; the load per evaluation must not move the run's
    sampling stream (the golden runs' steps after an evaluation sample as before)."""
    from llm_pg.evaluation.periodic import TrainingEvaluator

    config = tiny_config(TINYSTORIES, tiny_data_file, tmp_path, **{"kl.coef": 0.0, "evaluation.after_training": True})
    evaluator = TrainingEvaluator(config, setup_run(config))
    rng = torch.random.get_rng_state()
    assert evaluator.reference_loader() is not None
    assert torch.equal(torch.random.get_rng_state(), rng)


def test_release_freed_memory_returns_fragmented_heap_pages():
    """64 kB blocks (under glibc's mmap threshold) freed between held ones stay resident until malloc_trim."""
    import resource
    import sys

    from llm_pg.models.memory import release_freed_memory

    if not sys.platform.startswith("linux"):
        assert release_freed_memory() is False
        return

    def resident_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 1e6

    blocks = [torch.ones(16 * 1024) for _ in range(2000)]  # 2000 x 64 kB = 131 MB
    held = blocks[1::2]  # every other block stays: the freed ones are holes in the heap, not its top
    del blocks
    before = resident_mb()
    assert release_freed_memory() is True
    assert before - resident_mb() > 40  # most of the 65 MB freed
    assert len(held) == 1000


@pytest.mark.parametrize("settings, releases_per_step", [
    ({"training.gradient_accumulation_steps": 4}, 3),  # one optimizer step of 4 micro-batches
    ({"algorithm.name": "ppo", "ppo.epochs": 2, "ppo.num_minibatches": 2, "training.gradient_accumulation_steps": 2},
     7),  # 2 epochs x 2 minibatches x 2 micro-batches = 8 backward passes
], ids=["reinforce", "ppo"])
def test_memory_is_released_between_backward_passes_and_the_update_is_unchanged(settings, releases_per_step,
                                                                                tiny_model_dir, tiny_data_file,
                                                                                tmp_path, monkeypatch):
    """malloc_trim between every two backward passes of an update (after the last, the step's own release follows);
    the weights move, and exactly as they do with no release at all."""
    import llm_pg.models.memory as memory
    import llm_pg.training.update as update

    def trained(release, folder: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        monkeypatch.setattr(update, "release_freed_memory", release)
        config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path / folder, **{
            "training.prompts_per_step": 4, "generation.num_samples": 2, "algorithm.entropy_coef": 0.01, **settings})
        run = setup_run(config)
        start = [p.detach().clone() for p in run.model.parameters()]
        for step in range(2):
            train_step(config, run, step)
        return start, [p.detach().clone() for p in run.model.parameters()]

    calls = []
    start, released = trained(lambda: calls.append(1) or memory.release_freed_memory(), "released")
    assert len(calls) == 2 * releases_per_step
    assert any(not torch.equal(a, b) for a, b in zip(start, released))  # the update did move the weights
    _, kept = trained(lambda: False, "kept")
    assert all(torch.equal(a, b) for a, b in zip(released, kept))
