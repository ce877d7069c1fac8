"""Actor-Critic and PPO on the tiny model: the value head's values, saving, training, PPO's ratio, KL control."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import llm_pg.algorithms.registry
from helpers import tiny_config
from llm_pg.runs.checkpoint import latest_checkpoint, save_model
from llm_pg.config.schema import GenerationConfig
from llm_pg.rollout.sampling import sample, completion_outputs
from llm_pg.training.rl import train
from llm_pg.models.value_head import VALUE_HEAD_FILE, attach_value_head

CONSTANT_REWARD = "def constant(prompts, completions, references):\n    return [0.7] * len(completions)\n"


def constant_reward(folder: Path) -> dict:
    """Overrides for a reward of 0.7 for every completion: with no baseline every advantage is positive."""
    (folder / "const.py").write_text(CONSTANT_REWARD)
    return {"reward.components": [{"name": "const", "function": f"{folder / 'const.py'}:constant"}]}


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def policy_and_head(folder) -> tuple[dict, dict]:
    policy = {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(folder).state_dict().items()}
    return policy, load_file(str(Path(folder) / VALUE_HEAD_FILE))


@pytest.fixture()
def policy_with_head(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    head = attach_value_head(model)
    torch.manual_seed(1)
    torch.nn.init.normal_(head.linear.weight)  # a head that gives each state its own value
    return model, tokenizer


@pytest.mark.parametrize("group_size", [1, 2])
def test_rollout_values_equal_the_update_pass_values(policy_with_head, group_size):
    """V(s_t) read during generate() equals V(s_t) of the update's forward pass (both layouts)."""
    model, tokenizer = policy_with_head
    prompts = [tokenizer("the cat sees")["input_ids"], tokenizer("a dog")["input_ids"]]
    torch.manual_seed(0)
    rollout = sample(model, tokenizer, prompts, GenerationConfig(num_samples=2, max_new_tokens=6))
    assert rollout.values is not None and rollout.values.shape == rollout.completion_ids.shape
    scores = completion_outputs(model, rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids,
                          rollout.completion_mask, with_values=True, group_size=group_size)
    torch.testing.assert_close(scores.values, rollout.values, atol=1e-5, rtol=1e-5)
    assert (scores.values[rollout.completion_mask == 0] == 0).all()
    assert scores.values[rollout.completion_mask == 1].std() > 0.1  # not a constant: positions are distinct


def test_value_head_round_trips_bit_exactly_and_stays_out_of_the_policy_file(policy_with_head, tmp_path):
    model, tokenizer = policy_with_head
    save_model(model, tokenizer, tmp_path / "saved")
    policy_file = load_file(str(tmp_path / "saved" / "model.safetensors"))
    assert not any(k.startswith("value_head") for k in policy_file)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    head = attach_value_head(loaded, path=tmp_path / "saved")
    for name, tensor in model.value_head.state_dict().items():
        assert torch.equal(head.state_dict()[name], tensor), name


def test_actor_critic_trains_policy_and_critic_and_saves_the_head(tiny_model_dir, tiny_data_file, tmp_path):
    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{
        "algorithm.name": "actor_critic", "critic.gae_lambda": 0.95, "training.save_every": 1,
        **constant_reward(tmp_path)})  # a tiny model's first ROUGE rewards may all be 0
    train(config)
    before = {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict().items()}
    policy, head = policy_and_head(tmp_path / "final")
    assert any(not torch.equal(before[k], policy[k]) for k in policy)  # the actor moved
    assert head["linear.weight"].abs().sum() > 0  # the critic moved from its zero initialization
    assert (latest_checkpoint(tmp_path) / "model" / VALUE_HEAD_FILE).exists()
    metrics = read_metrics(tmp_path)
    assert all(math.isfinite(m["loss/value"]) and "value/explained_variance" in m for m in metrics)
    assert metrics[0]["loss/value"] > 0  # V = 0 at first while rewards are not


def test_critic_warmup_moves_only_the_critic(tiny_model_dir, tiny_data_file, tmp_path):
    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{
        "algorithm.name": "actor_critic", "critic.warmup_steps": 2, "training.max_steps": 2})
    train(config)
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    policy, head = policy_and_head(tmp_path / "final")
    assert all(torch.equal(before[k], policy[k]) for k in policy)  # detach_trunk: the critic cannot move it
    assert head["linear.weight"].abs().sum() > 0


@pytest.mark.parametrize("detach", [True, False])
def test_critic_gradient_reaches_the_trunk_unless_detached(detach, tiny_model_dir):
    """The value loss alone: its gradient reaches the trunk (never the LM head) only with detach_trunk false."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    attach_value_head(model, detach_trunk=detach)
    with torch.no_grad():
        model.value_head.linear.weight.fill_(0.1)  # a zero head passes no gradient back
    ids, mask = torch.tensor([[1, 40, 41, 42, 43]]), torch.ones(1, 5, dtype=torch.long)
    scores = completion_outputs(model, ids[:, :2], mask[:, :2], ids[:, 2:], mask[:, 2:], with_values=True)
    (scores.values ** 2).sum().backward()
    reached = [n for n, p in model.named_parameters()
               if not n.startswith("value_head.") and p.grad is not None and p.grad.abs().sum() > 0]
    assert bool(reached) == (not detach)
    assert not any("lm_head" in n for n in reached)
    assert model.value_head.linear.weight.grad.abs().sum() > 0


def test_value_head_learns_a_constant_reward(tiny_model_dir, tiny_data_file, tmp_path):
    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{
        "algorithm.name": "actor_critic", "training.max_steps": 300, "training.learning_rate": 1e-6,
        "critic.learning_rate": 1e-2, "training.lr_scheduler": "linear", **constant_reward(tmp_path)})
    train(config)
    last = read_metrics(tmp_path)[-10:]
    assert all(abs(m["value/mean"] - 0.7) < 0.03 for m in last), [m["value/mean"] for m in last]
    # sequence_mean of 0.5 (V - R)^2 over <= 6 tokens: below this, the per-token error is under 0.05 (in the median
    # of the last 10 steps: with a critic learning rate of 1e-2 a batch of unusual states can spike)
    losses = sorted(m["loss/value"] for m in last)
    assert (losses[4] + losses[5]) / 2 < 0.5 * 0.05 ** 2 * 6, losses


def test_ppo_ratio_is_exactly_one_on_the_first_minibatch(tiny_model_dir, tiny_data_file, tmp_path, monkeypatch):
    ratios = []
    real = llm_pg.algorithms.registry.ppo_clip_loss

    def recording(logprobs, old_logprobs, *args, **kwargs):
        ratios.append((logprobs.detach() - old_logprobs).exp() * args[1])
        return real(logprobs, old_logprobs, *args, **kwargs)

    monkeypatch.setattr(llm_pg.algorithms.registry, "ppo_clip_loss", recording)
    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{
        "algorithm.name": "ppo", "ppo.epochs": 2, "ppo.num_minibatches": 2, "training.max_steps": 1,
        "algorithm.baseline": "none", **constant_reward(tmp_path)})
    train(config)
    assert len(ratios) == 4  # 2 epochs x 2 minibatches
    mask = ratios[0] != 0
    assert torch.equal(ratios[0][mask], torch.ones_like(ratios[0][mask]))  # exactly 1, not merely close
    assert any(not torch.allclose(r[r != 0], torch.ones_like(r[r != 0])) for r in ratios[1:])  # then it moves
    metrics = read_metrics(tmp_path)[0]
    assert metrics["ppo/epochs"] == 2 and 0 <= metrics["ppo/clip_frac"] <= 1 and metrics["ppo/approx_kl"] >= 0


def test_ppo_target_kl_stops_the_epochs_early(tiny_model_dir, tiny_data_file, tmp_path):
    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{
        "algorithm.name": "ppo", "ppo.epochs": 4, "ppo.target_kl": 1e-12, "algorithm.baseline": "none",
        **constant_reward(tmp_path)})
    train(config)
    assert [m["ppo/epochs"] for m in read_metrics(tmp_path)] == [1.0, 1.0, 1.0]


def test_ppo_with_a_critic_trains_the_value_head(tiny_model_dir, tiny_data_file, tmp_path):
    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{
        "algorithm.name": "ppo", "ppo.use_critic": True, "critic.value_clip": 0.2})
    train(config)
    _, head = policy_and_head(tmp_path / "final")
    assert head["linear.weight"].abs().sum() > 0
    assert "loss/value" in read_metrics(tmp_path)[0]


@pytest.mark.parametrize("target,direction", [(1e-6, 1), (1e6, -1)])
def test_adaptive_kl_coefficient_follows_the_target_in_training(target, direction, tiny_model_dir, tiny_data_file,
                                                                tmp_path):
    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{
        "kl.coef": 0.1, "kl.target": target, "kl.horizon": 10, "kl.mode": "loss", "kl.estimator": "k3",
        "training.max_steps": 4,
        "algorithm.baseline": "none", **constant_reward(tmp_path)})
    train(config)
    coefs = [m["kl/coef"] for m in read_metrics(tmp_path)]
    assert coefs[0] == 0.1
    assert coefs[1] == pytest.approx(0.1 * (1 - 0.2 * 4 / 10))  # step 1 samples the reference itself: KL 0
    assert all(direction * (b - a) > 0 for a, b in zip(coefs[1:], coefs[2:])), coefs


def test_kl_in_the_loss_is_logged_and_leaves_the_reward_alone(tiny_model_dir, tiny_data_file, tmp_path):
    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{
        "kl.coef": 0.5, "kl.mode": "loss", "kl.estimator": "k3", "algorithm.baseline": "none",
        **constant_reward(tmp_path)})
    train(config)
    metrics = read_metrics(tmp_path)
    assert metrics[0]["policy/kl"] == pytest.approx(0.0, abs=1e-6)  # the first rollout is the reference itself
    assert metrics[0]["loss/kl"] == pytest.approx(0.0, abs=1e-6)
    assert metrics[-1]["policy/kl"] > 0 and metrics[-1]["loss/kl"] > 0
    # baseline none, gamma 1, KL not in the reward: every token's advantage is the task reward, 0.7
    assert metrics[-1]["advantage/mean"] == pytest.approx(0.7)
