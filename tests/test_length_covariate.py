"""rm.length_covariate: a Bradley-Terry reward model trained as r = q + beta * L (L: the answer's length in 100
characters) and saved as q alone (llm_pg/models/reward_model.py Scorer, llm_pg/training/reward_model.py)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file

from llm_pg.config.schema import config_from_dict
from llm_pg.errors import ConfigError
from llm_pg.models import reward_model as rm_model


def test_the_scorer_adds_beta_times_length_and_the_loss_gradient_of_beta_is_the_hand_computed_one(monkeypatch):
    q = torch.tensor([0.5, -0.2, 0.1, 0.3], requires_grad=True)  # chosen 0, 1, then rejected 0, 1
    monkeypatch.setattr(rm_model, "sequence_scores", lambda model, ids, mask: q)
    scorer = rm_model.Scorer(torch.nn.Identity(), length_covariate=True)
    scorer.length_beta.data.fill_(0.7)
    lengths = torch.tensor([1.2, 0.4, 0.3, 0.9])
    r = scorer(None, None, lengths)
    torch.testing.assert_close(r, q + 0.7 * lengths, rtol=0, atol=0)
    assert torch.equal(scorer(None, None), q)  # without lengths: q, the saved model's score
    loss = -F.logsigmoid(r[:2] - r[2:]).mean()
    loss.backward()
    delta = (q[:2] - q[2:] + 0.7 * (lengths[:2] - lengths[2:])).detach()
    expected = -(torch.sigmoid(-delta) * (lengths[:2] - lengths[2:])).mean()  # d/d beta of -mean log sigma(delta)
    torch.testing.assert_close(scorer.length_beta.grad, expected, rtol=1e-6, atol=1e-7)
    assert rm_model.Scorer(torch.nn.Identity()).length_beta is None  # off: no parameter at all


def _write_pairs(folder):
    """The chosen answer is always much longer than the rejected one (and names another object)."""
    folder.mkdir(exist_ok=True)
    for split, n in (("train", 24), ("test", 8)):
        rows = [{"prompt": f"the cat {i}", "chosen": "the ball and the red tree and the sun. " * 3,
                 "rejected": "a dog."} for i in range(n)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _config(tmp_path, model_dir, folder, steps, covariate=True, **rm):
    values = {"model": {"name_or_path": str(model_dir)}, "training": {"num_threads": 1, "seed": 0},
              "rm": {"source": str(_write_pairs(tmp_path / "pairs")), "batch_size": 4, "max_steps": steps,
                     "learning_rate": 1e-3, "lr_scheduler": "constant", "output_dir": str(tmp_path / folder),
                     "bootstrap_resamples": 50, "length_covariate": covariate, **rm}}
    return config_from_dict(yaml.safe_load(yaml.safe_dump(values)))


def test_beta_learns_the_length_preference_and_only_q_is_saved(tiny_model_dir, tmp_path):
    from llm_pg.training.reward_model import train_reward_model

    result = train_reward_model(_config(tmp_path, tiny_model_dir, "with", 4))
    log = [json.loads(line) for line in (tmp_path / "with" / "rm_metrics.jsonl").read_text().splitlines()]
    betas = [row["rm/length_beta"] for row in log]
    assert len(betas) == 4 and all(b > a for a, b in zip([0.0] + betas, betas))  # longer is chosen: beta grows
    assert result["length_beta"] == pytest.approx(betas[-1])
    assert "Trained with a length covariate" in (tmp_path / "with" / "report.md").read_text()
    saved = load_file(tmp_path / "with" / "final" / "model.safetensors")
    assert not any("length_beta" in name for name in saved)  # the saved reward model is q
    train_reward_model(_config(tmp_path, tiny_model_dir, "without", 4, covariate=False))
    plain = load_file(tmp_path / "without" / "final" / "model.safetensors")
    assert "length_beta" not in json.loads((tmp_path / "without" / "eval.json").read_text())
    assert any(not torch.equal(saved[k], plain[k]) for k in saved)  # beta took part of the signal from q


def test_a_resumed_run_continues_beta_exactly(tiny_model_dir, tmp_path):
    from llm_pg.training.reward_model import train_reward_model

    train_reward_model(_config(tmp_path, tiny_model_dir, "straight", 4, eval_split=""))
    train_reward_model(_config(tmp_path, tiny_model_dir, "resumed", 2, save_every=2, eval_split=""))
    train_reward_model(_config(tmp_path, tiny_model_dir, "resumed", 4, save_every=2, eval_split=""), resume=True)
    logs = [[json.loads(line)["rm/length_beta"] for line in (tmp_path / name / "rm_metrics.jsonl").read_text()
             .splitlines()] for name in ("straight", "resumed")]
    assert logs[0] == pytest.approx(logs[1], abs=1e-7)
    a, b = (load_file(tmp_path / name / "final" / "model.safetensors") for name in ("straight", "resumed"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0)


def test_a_learning_rate_of_beta_that_cannot_move_it_is_one_line(tiny_model_dir, tmp_path):
    from llm_pg.training.reward_model import check_rm_config

    with pytest.raises(ConfigError, match=r"^rm.length_covariate_lr: must be > 0, got 0.0$"):
        check_rm_config(_config(tmp_path, tiny_model_dir, "x", 2, length_covariate_lr=0.0).rm)
