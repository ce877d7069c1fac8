"""Integration on real pretrained weights: ../shared/models/tinystories-656k (skipped when the assets are absent)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from helpers import requires_tinystories
from llm_pg.config.schema import GenerationConfig, ModelConfig, config_from_dict
from llm_pg.models.policy import load_policy, load_tokenizer
from llm_pg.rollout.sampling import completion_logprobs, sample
from llm_pg.training.rl import train

pytestmark = requires_tinystories

ROWS = [  # the model's pieces carry a trailing space, so prompts end with one
    {"prompt": "Once upon a time, there was a ", "reference": "little girl named Lily."},
    {"prompt": "Once upon a time, there was a big ", "reference": "dog named Max."},
    {"prompt": "One day, a little boy went to the ", "reference": "park with his mom."},
    {"prompt": "Lily liked to ", "reference": "play with her ball."},
    {"prompt": "The sun was ", "reference": "shining in the sky."},
    {"prompt": "Tom and his friend ", "reference": "went to the park."},
]


@pytest.fixture(scope="module")
def tinystories(tinystories_dir):
    config = ModelConfig(name_or_path=str(tinystories_dir))
    return load_policy(config).eval(), load_tokenizer(config)


def params(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_two_training_steps_on_real_weights(tinystories_dir, tmp_path):
    data = tmp_path / "stories.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS * 4))
    config = config_from_dict({
        "model": {"name_or_path": str(tinystories_dir)},
        "data": {"source": str(data), "use_chat_template": False},
        "generation": {"num_samples": 2, "max_new_tokens": 8},
        "reward": {"components": [{"name": "rougeL", "weight": 1.0}]},
        # No baseline: every completion that overlaps its reference pushes the policy, so two steps must move it.
        "algorithm": {"baseline": "none"},
        "training": {"output_dir": str(tmp_path / "run"), "max_steps": 2, "prompts_per_step": 2,
                     "learning_rate": 1e-3, "num_threads": 1},
    })
    before = params(AutoModelForCausalLM.from_pretrained(tinystories_dir))
    train(config)
    after = params(AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final"))

    assert before.keys() == after.keys()
    assert all(torch.isfinite(p).all() for p in after.values())
    assert max((after[k] - before[k]).abs().max().item() for k in before) > 1e-4
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        assert math.isfinite(m["loss/policy"]) and math.isfinite(m["policy/entropy"])
        assert 0.0 <= m["reward/mean"] <= 1.0
    assert any(m["reward/mean"] > 0 for m in metrics)  # the stories do overlap the references


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_rollout_logprobs_match_a_forward_pass_on_real_weights(tinystories, temperature):
    model, tokenizer = tinystories
    prompts = [tokenizer(r["prompt"])["input_ids"] for r in ROWS[:4]]
    assert len(set(map(len, prompts))) > 1  # different lengths: left padding is exercised
    torch.manual_seed(0)
    r = sample(model, tokenizer, prompts, GenerationConfig(num_samples=2, max_new_tokens=8, temperature=temperature))
    with torch.no_grad():
        logprobs, _ = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                                          temperature=temperature)
    mask = r.completion_mask.bool()
    torch.testing.assert_close(logprobs[mask], r.logprobs[mask], atol=1e-4, rtol=1e-4)
    assert r.logprobs[mask].std() > 0.1  # a real, non-uniform policy: the comparison has teeth
    assert all(isinstance(c, str) for c in r.completions) and any(c.strip() for c in r.completions)
