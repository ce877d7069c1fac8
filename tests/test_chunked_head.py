"""training.logits_chunk_tokens (llm_pg/rollout/chunked_head.py): the LM head run in chunks after the trunk gives
the full path's log-probs, entropies, values and gradients (within 1e-5), never makes the (N, T, V) logits, and
runs through the update, the KL reference and LoRA."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from helpers import TINYSTORIES, assert_one_line_error, cli_env, requires_tinystories, run_cli, tiny_config, \
    write_config_yaml
from llm_pg.config.schema import GenerationConfig, ModelConfig
from llm_pg.errors import ConfigError
from llm_pg.models.policy import load_policy, load_tokenizer
from llm_pg.models.value_head import attach_value_head
from llm_pg.rollout.chunked_head import chunkable, lm_head_skipped
from llm_pg.rollout.sampling import sample, completion_outputs

K = 3
PROMPTS = ["a boy", "the cat sees", "the old man plays with"]  # different lengths: left padding matters
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    config = ModelConfig(name_or_path=str(tiny_model_dir))
    return config, load_tokenizer(config)


@pytest.fixture(scope="module")
def batch(tiny):
    """3 prompts x K samples of up to 8 tokens, some ended early (the padding after them is never scored)."""
    config, tokenizer = tiny
    torch.manual_seed(0)
    r = sample(load_policy(config).eval(), tokenizer, [tokenizer(t)["input_ids"] for t in PROMPTS],
               GenerationConfig(num_samples=K, max_new_tokens=8))
    assert 0 < r.completion_mask.sum() < r.completion_mask.numel()
    return r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask


def policy_with_critic(config):
    """The tiny policy with a value head that is not zero and whose gradient reaches the trunk."""
    model = load_policy(config).eval()
    attach_value_head(model, detach_trunk=False)
    with torch.no_grad():
        model.value_head.linear.weight.copy_(torch.linspace(-0.1, 0.1, model.value_head.linear.in_features))
    return model


def scores_and_gradients(model, batch, chunk: int, group_size: int):
    """(CompletionOutputs, {name: grad}) of L = sum log pi + 0.1 sum H + sum V, through completion_outputs at temperature 0.7."""
    model.zero_grad(set_to_none=True)
    s = completion_outputs(model, *batch, with_entropy=True, entropy_grad=True, with_values=True, temperature=0.7,
                     group_size=group_size, logits_chunk_tokens=chunk)
    (s.logprobs.sum() + 0.1 * s.entropy.sum() + s.values.sum()).backward()
    return s, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("group_size", [1, K])
@pytest.mark.parametrize("chunk", [1, 5, 1000])
def test_chunked_scores_and_gradients_equal_the_full_path(tiny, batch, chunk, group_size):
    model = policy_with_critic(tiny[0])
    full, expected = scores_and_gradients(model, batch, 0, group_size)
    chunked, got = scores_and_gradients(model, batch, chunk, group_size)
    mask = batch[3].bool()
    for name in ("logprobs", "entropy", "values"):
        torch.testing.assert_close(getattr(chunked, name), getattr(full, name), **TOLERANCE)
        assert (getattr(chunked, name)[~mask] == 0).all()  # padding is 0, as the full path's after its mask
    assert torch.equal(chunked.values, full.values)  # V reads the same hidden states: bit for bit
    assert expected.keys() == got.keys() and "model.embed_tokens.weight" in got  # tied to the LM head
    for name in expected:
        relative = ((got[name] - expected[name]).norm() / expected[name].norm()).item()
        assert relative < 1e-5, f"{name}: relative error {relative:.2e}"


class LargestLogits(TorchDispatchMode):
    """The most rows (positions) of any tensor whose last dimension is the vocabulary V, made while it is active
    (but the LM head's weight seen transposed, (H, V), in its matmuls)."""

    def __init__(self, vocabulary: int, hidden: int):
        super().__init__()
        self.vocabulary, self.weight, self.rows = vocabulary, (hidden, vocabulary), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-1] == self.vocabulary \
                    and tuple(t.shape) != self.weight:
                self.rows = max(self.rows, t.numel() // self.vocabulary)
        return out


@pytest.mark.parametrize("chunk", [0, 4])
def test_the_chunked_path_never_holds_more_than_one_chunk_of_logits(tiny, batch, chunk):
    model = load_policy(tiny[0]).eval()
    tokens = int(batch[3].sum())
    # forward and backward (where the checkpointed chunks are recomputed)
    with LargestLogits(model.config.vocab_size, model.config.hidden_size) as largest:
        completion_outputs(model, *batch, with_entropy=True, entropy_grad=True, logits_chunk_tokens=chunk).logprobs \
            .sum().backward()
    N, T = batch[2].shape
    if chunk == 0:
        assert largest.rows >= N * T > tokens  # the full path: every position's logits at once
    else:
        assert largest.rows == chunk < tokens


def test_lora_policy_scores_the_same_chunked(tiny, batch):
    pytest.importorskip("peft")
    from llm_pg.config.schema import LoRAConfig
    from llm_pg.models.lora import add_lora

    model = add_lora(load_policy(tiny[0]).eval(), LoRAConfig(r=4, target_modules="all-linear"))
    with torch.no_grad():  # B = 0 at the start: give the adapters a value so that they change the scores
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.full_like(p, 0.01))
    grads = []
    for chunk in (0, 5):
        model.zero_grad(set_to_none=True)
        s = completion_outputs(model, *batch, with_entropy=True, group_size=K, logits_chunk_tokens=chunk)
        s.logprobs.sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        if chunk == 0:
            full = s
    torch.testing.assert_close(s.logprobs, full.logprobs, **TOLERANCE)
    torch.testing.assert_close(s.entropy, full.entropy, **TOLERANCE)
    assert grads[0].keys() == grads[1].keys() and all("lora_" in n for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-7)


def test_the_head_runs_in_the_forward_s_autocast_and_is_restored(tiny, batch):
    model = load_policy(tiny[0]).eval()
    head = model.get_output_embeddings()
    with torch.autocast("cpu", dtype=torch.bfloat16), lm_head_skipped(model) as skipped:
        logits = model(input_ids=batch[0], attention_mask=batch[1]).logits
    assert logits.shape == (*batch[0].shape, 0)  # the model's own logits are skipped
    assert skipped.inputs[0].shape == (*batch[0].shape, model.config.hidden_size)
    assert skipped.logits(skipped.inputs[0][:, -1]).dtype == torch.bfloat16  # autocast met in the forward
    assert "forward" not in vars(head)  # the head computes its logits again after the block
    assert model(input_ids=batch[0]).logits.shape[-1] == model.config.vocab_size


def test_models_that_transform_their_logits_keep_the_full_path(tiny):
    model = load_policy(tiny[0]).eval()
    assert chunkable(model)
    model.config.final_logit_softcapping = 30.0  # Gemma 2: logits = 30 tanh(W h / 30)
    assert not chunkable(model)


def test_negative_chunk_is_refused_in_one_line(tiny_model_dir, tiny_data_file, tmp_path):
    with pytest.raises(ConfigError, match="training.logits_chunk_tokens: must be >= 0"):
        tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{"training.logits_chunk_tokens": -1})
    cfg = write_config_yaml(tmp_path / "c.yaml", tiny_model_dir, tiny_data_file, tmp_path / "out")
    result = run_cli("train", "--config", str(cfg), "training.logits_chunk_tokens=-4", cwd=tmp_path)
    assert result.returncode != 0
    assert_one_line_error(result.stderr, "training.logits_chunk_tokens")


def test_a_training_step_with_chunks_matches_the_full_path(tiny_model_dir, tiny_data_file, tmp_path, monkeypatch):
    """PPO with a critic, the KL in the loss (the reference scored chunked too) and an entropy bonus: one rollout's
    four optimizer steps move each weight matrix as the full path does, within 1e-4 of its move's norm (AdamW
    divides by sqrt(v): a gradient element near 0 turns a 1e-7 difference into a larger one of its own; under 1e-5
    on the AVX-512 Xeon and EPYC, 1.1e-5 on an AVX2 EPYC; a wrong chunk would be off by O(1))."""
    import llm_pg.rollout.sampling
    from llm_pg.training.rl import setup_run, train_step

    calls = []
    real = llm_pg.rollout.sampling.chunked_outputs
    monkeypatch.setattr(llm_pg.rollout.sampling, "chunked_outputs", lambda *a, **k: calls.append(1) or real(*a, **k))
    overrides = {"algorithm.name": "ppo", "ppo.use_critic": True, "kl.coef": 0.1, "kl.mode": "loss",
                 "algorithm.entropy_coef": 0.01}
    weights, metrics = {}, {}
    for chunk in (0, 3):
        config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path / str(chunk),
                             **overrides, **{"training.logits_chunk_tokens": chunk})
        run = setup_run(config)
        assert run.reference.logits_chunk_tokens == chunk
        start = {n: p.detach().clone() for n, p in run.model.named_parameters()}
        metrics[chunk] = train_step(config, run, 0)
        weights[chunk] = {n: p.detach() - start[n] for n, p in run.model.named_parameters()}  # the step's move
    # the reference (1 pass), PPO's log pi_old (2 minibatches) and 2 epochs x 2 minibatches of gradient steps
    assert len(calls) == 1 + 2 + 4
    for name, moved in weights[0].items():
        if moved.norm() == 0:  # e.g. the value head when every return is 0
            assert torch.equal(weights[3][name], moved), name
            continue
        relative = ((weights[3][name] - moved).norm() / moved.norm()).item()
        assert relative < 1e-4, f"{name}: relative difference {relative:.2e}"
    assert sum(moved.norm() > 0 for moved in weights[0].values()) >= len(weights[0]) - 2
    for key in ("loss/policy", "loss/value", "loss/kl", "policy/entropy", "ppo/approx_kl"):
        assert metrics[3][key] == pytest.approx(metrics[0][key], rel=1e-4, abs=1e-7), key


def test_chunks_and_gradient_checkpointing_together_give_the_same_gradients(tiny, batch):
    from llm_pg.models.memory import enable_gradient_checkpointing, update_mode

    model = load_policy(tiny[0]).eval()
    enable_gradient_checkpointing(model)
    grads = []
    for chunk in (0, 4):
        model.zero_grad(set_to_none=True)
        with update_mode(model):
            completion_outputs(model, *batch, with_entropy=True, entropy_grad=True, group_size=K,
                         logits_chunk_tokens=chunk).logprobs.sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, expected in grads[0].items():
        assert ((grads[1][name] - expected).norm() / expected.norm()).item() < 1e-5, name


@requires_tinystories
def test_bench_memory_script_prints_one_line_per_variant(tmp_path):
    """scripts/bench_memory.py on the real tiny model: each variant in its own process, its peak and its times."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_memory.py"
    command = [sys.executable, str(script), "--model", str(TINYSTORIES), "--steps", "1", "--chunks", "0", "4",
               "--set", "training.num_threads=1", "generation.max_new_tokens=8"]
    out = subprocess.run(command, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split() for line in out.stdout.splitlines()[1:]]
    assert [row[:2] for row in rows] == [["0", "True"], ["4", "True"]]
    for row in rows:  # chunk trim set-up-peak GB peak GB RSS GB s/step s/update
        setup_peak, peak, step_s, update_s = float(row[2]), float(row[4]), float(row[8]), float(row[9])
        assert 0.1 < setup_peak <= peak < 10 and 0 < update_s < step_s


@pytest.mark.parametrize("family", ["gemma2", "gemma3", "gpt2", "gpt_neox", "mistral_sliding_window", "phi3", "qwen2",
                                    "qwen3"])
def test_every_family_scores_the_same_chunked(family):
    """The model families of tests/test_generation_backends.py; Gemma 2 caps its logits after the head
    (final_logit_softcapping), so it keeps the full path and gives the same numbers bit for bit."""
    from test_generation_backends import encode, tiny_family_model

    from helpers import build_tokenizer

    tokenizer = build_tokenizer()
    model = tiny_family_model(family, tokenizer)
    torch.manual_seed(1)
    r = sample(model, tokenizer, encode(tokenizer), GenerationConfig(num_samples=2, max_new_tokens=8))
    args = (r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask)
    full, chunked = (completion_outputs(model, *args, with_entropy=True, group_size=2, logits_chunk_tokens=chunk)
                     for chunk in (0, 3))
    assert chunkable(model) == (family != "gemma2")
    for name in ("logprobs", "entropy"):
        if family == "gemma2":
            assert torch.equal(getattr(chunked, name), getattr(full, name))
        torch.testing.assert_close(getattr(chunked, name), getattr(full, name), **TOLERANCE)


def test_a_model_that_never_calls_its_head_module_keeps_its_own_logits(tiny, batch):
    """Remote code may multiply by lm_head.weight itself: nothing is recorded, so its own logits are scored."""
    from transformers import LlamaForCausalLM
    from transformers.modeling_outputs import CausalLMOutputWithPast

    class HeadByWeight(LlamaForCausalLM):
        def forward(self, input_ids=None, attention_mask=None, position_ids=None, use_cache=None, logits_to_keep=0,
                    **kwargs):
            h = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                           use_cache=False).last_hidden_state
            logits = torch.nn.functional.linear(h[:, -logits_to_keep:], self.lm_head.weight)
            return CausalLMOutputWithPast(logits=logits)

    model = HeadByWeight.from_pretrained(tiny[0].name_or_path).eval()
    full, chunked = (completion_outputs(model, *batch, with_entropy=True, logits_chunk_tokens=chunk) for chunk in (0, 4))
    assert torch.equal(chunked.logprobs, full.logprobs) and torch.equal(chunked.entropy, full.entropy)
    assert full.logprobs.abs().sum() > 0


def test_sharded_weights_refuse_chunks_in_one_line(tiny_model_dir, tiny_data_file, tmp_path):
    """ZeRO-3 and FSDP hold a shard of the head's weight outside the model's forward; ZeRO-2 and DDP are fine."""
    from test_distributed import deepspeed_accelerator, fake_accelerator

    from accelerate.utils import DistributedType
    from llm_pg.models.sharding import prepare_backend

    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{"training.logits_chunk_tokens": 64})
    for sharded in (deepspeed_accelerator(3), fake_accelerator(DistributedType.FSDP, fsdp_version=2)):
        with pytest.raises(ConfigError, match=r"^training.logits_chunk_tokens: the chunked LM head runs outside"):
            prepare_backend(sharded, config)
    prepare_backend(deepspeed_accelerator(2), config)
    prepare_backend(fake_accelerator(), config)


@requires_tinystories
def test_memory_peak_script_counts_the_weights_and_adamw_moments_exactly(tmp_path):
    """scripts/memory_peak.py on the real tiny model: at the update's peak the parameters are the model's float32
    bytes and AdamW's state twice that (two moments per weight); the categories add up to the total."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "memory_peak.py"
    command = [sys.executable, str(script), "--model", str(TINYSTORIES), "--set", "training.num_threads=1",
               "generation.max_new_tokens=8"]
    out = subprocess.run(command, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    total = float(lines[-9].split(":")[1].split()[0])
    sizes = {line[:18].strip(): float(line[18:].split()[0]) for line in lines[-8:]}
    weights = sum(p.numel() * 4 for p in load_policy(ModelConfig(name_or_path=str(TINYSTORIES))).parameters())
    assert sizes["parameters"] == pytest.approx(weights / 1e6, abs=0.001)
    assert sizes["optimizer state"] == pytest.approx(2 * weights / 1e6, abs=0.002)
    assert sizes["activations"] > 0 and sum(sizes.values()) == pytest.approx(total, abs=0.01)
