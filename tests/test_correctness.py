"""Settings that once trained something other than the config says (issue 12), each pinned by a test.

The LR schedule with several processes and whitening over processes: tests/test_reliability.py
(test_two_processes_equal_one_process_with_the_whole_batch); the unsound KL pairs and top-k/top-p:
tests/test_errors.py and tests/test_exact_gradients.py; stop strings: tests/test_rollout.py; deprecated forward
arguments: tests/test_model_calls.py.
"""

from __future__ import annotations

import json
import threading

import pytest
import torch
from safetensors.torch import load_file

from helpers import tiny_config
from llm_pg.algorithms import advantages as adv
from llm_pg.config.schema import config_from_dict
from llm_pg.data.prompts import load_examples
from llm_pg.evaluation.heldout import evaluate_split
from llm_pg.models.policy import load_policy, load_tokenizer
from llm_pg.training.rl import train


def _weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _length_reward(folder) -> dict:
    """Overrides for a reward that varies between completions (the tiny model's ROUGE is often 0 for all)."""
    (folder / "length.py").write_text("def reward(prompts, completions, references, **columns):\n"
                                      "    return [len(c) / 10 for c in completions]\n")
    return {"reward.components": [{"name": "length", "function": f"{folder / 'length.py'}:reward"}]}


def _metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_critic_warmup_leaves_the_policy_bit_identical(tiny_model_dir, tiny_data_file, tmp_path):
    """Entropy bonus, KL in the loss, weight decay and a critic whose gradient reaches the trunk: none may move the
    policy while critic.warmup_steps trains the value head alone."""
    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{
        "algorithm.name": "actor_critic", "critic.warmup_steps": 2, "critic.detach_trunk": False,
        "algorithm.entropy_coef": 0.1, "kl.coef": 0.1, "kl.mode": "loss", "kl.estimator": "k3",
        "training.weight_decay": 0.1, "training.max_steps": 2, **_length_reward(tmp_path)})
    train(config)
    start, end = _weights(tiny_model_dir), _weights(tmp_path / "final")
    assert start.keys() == end.keys()
    for name in start:
        assert torch.equal(start[name], end[name]), name
    head = load_file(str(tmp_path / "final" / "value_head.safetensors"))
    assert head["linear.weight"].abs().sum() > 0  # the critic did train (it starts at zero)
    assert all(m["loss/value"] > 0 for m in _metrics(tmp_path))


def test_the_actors_step_does_not_depend_on_the_critics_gradient(tiny_model_dir, tiny_data_file, tmp_path):
    """One max_grad_norm, each gradient clipped alone: scaling the critic's loss 100x leaves the policy's update
    bit-identical (clipped jointly, a large critic gradient shrank the actor's step)."""
    finals = {}
    for coef in (1.0, 100.0):
        run_dir = tmp_path / f"coef{coef}"
        train(tiny_config(tiny_model_dir, tiny_data_file, run_dir, **{
            "algorithm.name": "actor_critic", "critic.loss_coef": coef, "critic.learning_rate": 1e-2,
            "training.max_grad_norm": 1.0, "training.max_steps": 1, **_length_reward(tmp_path)}))
        finals[coef] = _weights(run_dir / "final")
        metrics = _metrics(run_dir)[0]
        assert metrics["policy/grad_norm"] > 1.0  # clipping is active, so a joint clip would have mattered
        assert metrics["value/grad_norm"] > 0
    for name in finals[1.0]:
        assert torch.equal(finals[1.0][name], finals[100.0][name]), name


def _two_processes(fn, first: tuple, second: tuple) -> list:
    """fn(*args, gather=...) run by two threads in lockstep, each gather joining both threads' tensors in rank
    order, as accelerator.gather joins two processes'."""
    barrier, slots, results = threading.Barrier(2), [None, None], [None, None]

    def gather_for(rank):
        def gather(x):
            slots[rank] = x
            barrier.wait()
            joined = torch.cat([slots[0], slots[1]])
            barrier.wait()  # both have read the slots before either writes the next statistic
            return joined
        return gather

    def work(rank, args):
        results[rank] = fn(*args, gather=gather_for(rank))

    threads = [threading.Thread(target=work, args=(rank, args)) for rank, args in enumerate((first, second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def test_whitening_and_explained_variance_use_every_process():
    """Two processes' halves whiten (and measure the critic) exactly like the whole step in one process."""
    values = torch.tensor([[3.0, 1.0, 0.0], [2.0, 2.0, 5.0], [-1.0, 0.0, 0.0], [4.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]])
    returns = values * 0.5 + torch.arange(12.0).view(4, 3) * 0.1
    halves = (slice(0, 2), slice(2, 4))

    whole = adv.whiten(values, mask)
    parts = _two_processes(lambda v, m, gather: adv.whiten(v, m, gather=gather),
                           *[(values[h], mask[h]) for h in halves])
    torch.testing.assert_close(torch.cat(parts), whole, rtol=1e-6, atol=1e-6)
    alone = adv.whiten(values[halves[0]], mask[halves[0]])  # what per-process whitening gave
    assert abs(alone[mask[halves[0]].bool()].mean().item()) < 1e-6
    assert abs(whole[halves[0]][mask[halves[0]].bool()].mean().item()) > 0.1  # the step's statistics differ

    one = adv.explained_variance(values, returns, mask)
    m = mask.bool()
    assert one == pytest.approx(1 - ((returns - values)[m].var() / returns[m].var()).item(), rel=1e-6)
    both = _two_processes(adv.explained_variance, *[(values[h], returns[h], mask[h]) for h in halves])
    assert both == pytest.approx([one, one], rel=1e-6)


def test_sampled_evaluation_uses_evaluation_top_k(tiny_model_dir, tiny_data_file, tmp_path):
    """Top-k is refused for training but works for sampled evaluation: top-1 sampling is greedy decoding."""
    def evaluate(**overrides):
        config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **overrides)
        tokenizer = load_tokenizer(config.model)
        examples = load_examples(config.data, "test", tokenizer)
        _, generations = evaluate_split(config, load_policy(config.model), tokenizer, examples)
        return [g.completion for g in generations]

    greedy = evaluate()
    assert evaluate(**{"evaluation.do_sample": True, "evaluation.top_k": 1}) == greedy
    assert evaluate(**{"evaluation.do_sample": True}) != greedy  # without top-k, sampling differs
    with pytest.raises(Exception, match="generation.top_k"):
        config_from_dict({"model": {"name_or_path": "x"}, "generation": {"top_k": 1}})
