"""Supervised warm start: the loss is the references' NLL alone, `llm-pg sft` lowers it, `train` chains SFT -> RL."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers import run_cli, tiny_config, write_config_yaml
from llm_pg.data.prompts import load_examples
from llm_pg.training.sft import collate, sft_loss, sft_pairs
from llm_pg.training.rl import train


def test_labels_cover_exactly_the_reference_and_eos():
    ids, mask, labels = collate([([5, 6, 7], [8, 2]), ([9], [10, 11, 2])], pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 8, 2], [0, 9, 10, 11, 2]]
    assert mask.tolist() == [[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]]
    assert labels.tolist() == [[-100, -100, -100, 8, 2], [-100, -100, 10, 11, 2]]


def test_sft_loss_is_the_mean_nll_of_the_target_tokens():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 12)
    labels = torch.tensor([[-100, -100, -100, 8, 2], [-100, -100, 10, 11, 2]])
    logp = logits.log_softmax(-1)
    # position t-1 predicts token t: targets at (0,3), (0,4), (1,2), (1,3), (1,4)
    nll = -(logp[0, 2, 8] + logp[0, 3, 2] + logp[1, 1, 10] + logp[1, 2, 11] + logp[1, 3, 2]) / 5
    assert sft_loss(logits, labels).item() == pytest.approx(nll.item(), rel=1e-6)


def reference_nll(model_dir, config) -> float:
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    pairs = sft_pairs(load_examples(config.data, "train", tokenizer), tokenizer)
    ids, mask, labels = collate(pairs, tokenizer.pad_token_id)
    with torch.no_grad():
        return sft_loss(model(input_ids=ids, attention_mask=mask).logits, labels).item()


def test_sft_command_lowers_the_reference_nll(tiny_model_dir, tiny_data_file, tmp_path):
    config_file = write_config_yaml(tmp_path / "c.yaml", tiny_model_dir, tiny_data_file, tmp_path / "rl", **{
        "sft.max_steps": 30, "sft.learning_rate": 1e-2, "sft.output_dir": str(tmp_path / "sft")})
    done = run_cli("sft", "--config", config_file, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path)
    before, after = reference_nll(tiny_model_dir, config), reference_nll(tmp_path / "sft" / "final", config)
    assert after < 0.7 * before, (before, after)
    losses = [json.loads(line)["sft/loss"] for line in (tmp_path / "sft" / "sft_metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 30 and losses[-1] < losses[0]


def test_train_chains_sft_then_rl_from_the_sft_model(tiny_model_dir, tiny_data_file, tmp_path):
    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{
        "sft.before_rl": True, "sft.max_steps": 10, "sft.learning_rate": 1e-2, "kl.coef": 0.1})
    train(config)
    sft_model = tmp_path / "sft" / "final"
    assert (sft_model / "model.safetensors").exists() and (tmp_path / "final" / "model.safetensors").exists()
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["model"]["name_or_path"] == str(sft_model)
    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert first["policy/kl"] == pytest.approx(0.0, abs=1e-6)  # the KL reference is the SFT model, not the base


def test_sft_rejects_bad_settings(tiny_model_dir, tiny_data_file, tmp_path):
    config_file = write_config_yaml(tmp_path / "c.yaml", tiny_model_dir, tiny_data_file, tmp_path / "rl")
    done = run_cli("sft", "--config", config_file, "sft.batch_size=0", cwd=tmp_path)
    assert done.returncode == 2 and "sft: max_steps and batch_size must be >= 1" in done.stderr
