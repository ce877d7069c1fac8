"""llm_pg's own model calls use the argument names of the installed transformers, and still work with model classes
that only know the older ones (llm_pg/models/calls.py)."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from torch import nn
from transformers import LlamaForCausalLM

from llm_pg.config.schema import GenerationConfig, LoRAConfig, ModelConfig
from llm_pg.models.lora import add_lora
from llm_pg.models.calls import accepts_logits_to_keep, cache_argument, forward_parameters
from llm_pg.models.policy import load_policy, load_tokenizer
from llm_pg.rollout.reference import Reference
from llm_pg.rollout.sampling import sample, completion_outputs
from llm_pg.models.value_head import attach_value_head

PROMPTS = ["a boy", "the cat sees", "the old man plays with"]  # different lengths: left padding matters


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    config = ModelConfig(name_or_path=str(tiny_model_dir))
    return load_policy(config).eval(), load_tokenizer(config)


def every_model_call(model, tokenizer, reference: Reference) -> dict[str, torch.Tensor]:
    """sample (shared prompt pass, decoding loop, stop string, values), greedy sample, completion_outputs with and without
    the shared prompt pass, and the reference's log-probs: every path through which llm_pg calls a model."""
    prompts = [tokenizer(t)["input_ids"] for t in PROMPTS]
    torch.manual_seed(0)
    r = sample(model, tokenizer, prompts, GenerationConfig(num_samples=2, max_new_tokens=6, stop_strings=["."]))
    greedy = sample(model, tokenizer, prompts, GenerationConfig(max_new_tokens=6), greedy=True)
    args = (r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask)
    with torch.no_grad():
        shared = completion_outputs(model, *args, group_size=2, with_values=True)
        full = completion_outputs(model, *args, with_entropy=True)
    return {"completion_ids": r.completion_ids, "logprobs": r.logprobs, "greedy": greedy.completion_ids,
            "shared": shared.logprobs, "full": full.logprobs, "reference": reference.logprobs(*args, group_size=2)}


@pytest.fixture
def deprecations(monkeypatch):
    """Fail on any FutureWarning / DeprecationWarning in the block, and record transformers' deprecation log lines
    (reading `output.past_key_values` logs one, once per process, instead of warning)."""
    import transformers.utils.generic as generic

    logged = []
    monkeypatch.setattr(generic.logger, "warning_once", lambda msg, *a, **k: logged.append(msg))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # transformers' deprecated arguments warn with FutureWarning
        warnings.simplefilter("error", DeprecationWarning)
        yield logged


def test_llm_pg_model_calls_raise_no_deprecation_warning(tiny_model_dir, tiny, deprecations):
    """Fails on `past_key_values=` ("deprecated and will be removed in version 5.40.0 ... Use `cache` instead")."""
    _, tokenizer = tiny
    model = load_policy(ModelConfig(name_or_path=str(tiny_model_dir))).eval()
    attach_value_head(model)  # the critic's hook on the LM head rides along every forward
    every_model_call(model, tokenizer, Reference(model))
    assert deprecations == []


def test_lora_model_calls_raise_no_deprecation_warning(tiny_model_dir, tiny, deprecations):
    """Through peft's wrapper, whose forward takes **kwargs: the argument name comes from the model inside."""
    _, tokenizer = tiny
    with warnings.catch_warnings():  # add_lora's own probe of peft is not a model call of llm_pg
        warnings.simplefilter("ignore")
        policy = add_lora(load_policy(ModelConfig(name_or_path=str(tiny_model_dir))).eval(),
                          LoRAConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert cache_argument(policy) == "cache" and accepts_logits_to_keep(policy)
    every_model_call(policy, tokenizer, Reference(policy, adapters_off=True))
    assert deprecations == []


@dataclasses.dataclass
class OldOutput:
    """An output class from before the rename: it has `past_key_values` and no `cache`."""

    logits: torch.Tensor
    past_key_values: object = None


class OldStyleLlama(LlamaForCausalLM):
    """A model class (remote code, or transformers before 5.x) whose forward knows only `past_key_values`."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None,
                logits_to_keep=0, **kwargs):
        assert "cache" not in kwargs, "llm_pg passed `cache` to a model that does not declare it"
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              cache=past_key_values, use_cache=use_cache, logits_to_keep=logits_to_keep, **kwargs)
        return OldOutput(out.logits, out.cache)


class Wrapper(nn.Module):
    """A DDP-like wrapper: the model is `.module`, and forward passes every argument on."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def test_a_model_class_that_only_knows_past_key_values_gets_it_and_gives_the_same_results(tiny, tiny_model_dir):
    model, tokenizer = tiny
    old = OldStyleLlama.from_pretrained(tiny_model_dir).eval()
    assert cache_argument(old) == "past_key_values" and cache_argument(model) == "cache"
    assert cache_argument(Wrapper(old)) == "past_key_values" and cache_argument(Wrapper(model)) == "cache"
    hits = forward_parameters.cache_info().hits
    cache_argument(old)
    assert forward_parameters.cache_info().hits == hits + 1  # the signature is read once per class
    expected, got = (every_model_call(m, tokenizer, Reference(m)) for m in (model, old))
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=1e-6, msg=key)
