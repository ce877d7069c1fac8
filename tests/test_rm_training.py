"""The reward model: the score is read at the last real token (left or right padding, pad == eos), `llm-pg rm`
learns tiny preferences, resumes exactly, and its folder is a `type: reward_model` reward for `llm-pg train`."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from helpers import build_tokenizer, cli_main, run_cli, tiny_config_dict, write_config_yaml, write_tiny_pairs
from safetensors.torch import load_file

from llm_pg.models import reward_model as rm_model
from llm_pg.config.schema import config_from_dict
from llm_pg.data.preferences import PairFields, Rendering, load_pairs
from llm_pg.rewards.reward_model import PreferenceReward


def tiny_classifier(tokenizer, kind: str):
    """A randomly initialized one-output Llama (score head) or BERT (classifier head)."""
    from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    if kind == "llama":
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=64, num_labels=1,
                             pad_token_id=tokenizer.pad_token_id)
        return LlamaForSequenceClassification(config).eval()
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    return BertForSequenceClassification(config).eval()


def padded(sequences, pad_id, side):
    ids, mask = rm_model.pad_right(sequences, pad_id)
    if side == "left":
        width = ids.shape[1]
        ids = torch.stack([torch.cat([i[m.bool()].new_full((width - int(m.sum()),), pad_id), i[m.bool()]])
                           for i, m in zip(ids, mask)])
        mask = torch.stack([torch.cat([torch.zeros(width - int(m.sum()), dtype=torch.long),
                                       torch.ones(int(m.sum()), dtype=torch.long)]) for m in mask])
    return ids, mask


SEQUENCES_ENDING_IN_EOS = ["the cat sees the ball.", "a dog likes a tree. the girl finds the sun.", "a boy eats."]


@pytest.mark.parametrize("side", ["right", "left"])
def test_causal_score_is_read_at_the_last_real_token_with_pad_equal_to_eos(side):
    tokenizer = build_tokenizer(pad_token="</s>")  # pad id == eos id == 2
    model = tiny_classifier(tokenizer, "llama")
    sequences = [tokenizer(t)["input_ids"] + [tokenizer.eos_token_id] for t in SEQUENCES_ENDING_IN_EOS]
    with torch.no_grad():  # the reference: each text alone, no padding, the score of its last token (the EOS)
        alone = [model.score(model.model(input_ids=torch.tensor([s])).last_hidden_state)[0, -1, 0].item()
                 for s in sequences]
        ids, mask = padded(sequences, tokenizer.pad_token_id, side)
        scores = rm_model.sequence_scores(model, ids, mask)
        torch.testing.assert_close(scores, torch.tensor(alone), atol=1e-5, rtol=0)
        # transformers' own pooling looks for the last token that is not the pad id: with pad == eos it reads
        # the token before the EOS, a different score
        hf = model(input_ids=ids, attention_mask=mask).logits[:, 0]
        assert (hf - torch.tensor(alone)).abs().min() > 1e-4


def test_encoder_keeps_its_own_pooling_and_padding_does_not_change_the_score():
    tokenizer = build_tokenizer()
    model = tiny_classifier(tokenizer, "bert")
    assert not rm_model.reads_last_token(model)
    sequences = [tokenizer(t)["input_ids"] for t in SEQUENCES_ENDING_IN_EOS]
    with torch.no_grad():
        alone = [model(input_ids=torch.tensor([s])).logits[0, 0].item() for s in sequences]
        scores = rm_model.sequence_scores(model, *rm_model.pad_right(sequences, tokenizer.pad_token_id))
    torch.testing.assert_close(scores, torch.tensor(alone), atol=1e-5, rtol=0)


def rm_config(tmp_path, model_dir, **rm):
    values = {"model": {"name_or_path": str(model_dir)}, "training": {"num_threads": 1, "seed": 0},
              "rm": {"source": str(write_tiny_pairs(tmp_path / "pairs")), "batch_size": 4, "max_steps": 40,
                     "learning_rate": 3e-3, "output_dir": str(tmp_path / "rm"), "bootstrap_resamples": 200, **rm}}
    path = tmp_path / "rm.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_rm_then_train_with_the_saved_reward_model(tiny_model_dir, tiny_data_file, tmp_path):
    done = run_cli("rm", "--config", rm_config(tmp_path, tiny_model_dir), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    final = tmp_path / "rm" / "final"
    assert (final / "model.safetensors").exists() and (final / "tokenizer.json").exists()
    result = json.loads((tmp_path / "rm" / "eval.json").read_text())
    assert result["pairs"] == 16 and result["accuracy"] > result["baselines"]["longer"]["accuracy"]
    assert result["ci"][0] > 0.5  # learned: which objects are preferred generalizes to the held-out prompts
    rows = [json.loads(line) for line in (tmp_path / "rm" / "eval_scores.jsonl").read_text().splitlines()]
    assert len(rows) == 16  # each held-out pair's scores: the accuracy recomputed from them is eval.json's
    correct = [1.0 if r["r_chosen"] > r["r_rejected"] else 0.5 if r["r_chosen"] == r["r_rejected"] else 0.0
               for r in rows]
    assert sum(correct) / 16 == pytest.approx(result["accuracy"], abs=1e-12)
    losses = [json.loads(line)["rm/loss"] for line in (tmp_path / "rm" / "rm_metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 40 and sum(losses[-5:]) < sum(losses[:5])
    assert "held-out pairwise accuracy" in done.stdout
    assert "![training](plots/rm_training.png)" in (tmp_path / "rm" / "report.md").read_text()
    assert (tmp_path / "rm" / "plots" / "rm_training.png").stat().st_size > 1000

    component = {"name": "rm", "type": "reward_model", "model": str(final)}
    config = write_config_yaml(tmp_path / "train.yaml", tiny_model_dir, tiny_data_file, tmp_path / "run",
                               **{"reward.components": [component], "training.max_steps": 2})
    done = run_cli("train", "--config", config, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all("reward/rm" in m and abs(m["reward/rm"]) < 50 for m in metrics)


def test_reward_component_reads_what_the_model_trained_on(tiny_model_dir, tmp_path):
    """The reward of (the pair's prompt as the policy sees it, the chosen answer) is the normalized score of the
    exact text the reward model trained on; with messages_column the conversation is rendered by the model's own
    settings. The normalization statistics are the training answers' mean and std."""
    from llm_pg.training.reward_model import tokenize_pairs, train_reward_model

    config = config_from_dict(yaml.safe_load(rm_config(tmp_path, tiny_model_dir, max_steps=3,
                                                       eval_split="").read_text()))
    train_reward_model(config)
    final = tmp_path / "rm" / "final"
    settings = rm_model.read_settings(final, "test")
    pairs = load_pairs(str(tmp_path / "pairs"), "train", PairFields())
    tokenizer = rm_model.load_tokenizer(str(final))
    model = rm_model.load_model(str(final), None, tokenizer.pad_token_id).eval()
    tokens = tokenize_pairs(pairs, tokenizer, Rendering(), 512)
    raw = torch.tensor(rm_model.score_ids(model, [t.chosen for t in tokens] + [t.rejected for t in tokens],
                                          tokenizer.pad_token_id, 8, "cpu"))
    assert settings["normalization"]["mean"] == pytest.approx(raw.mean().item(), abs=1e-5)
    assert settings["normalization"]["std"] == pytest.approx(raw.std().item(), abs=1e-5)
    expected = ((raw[:2] - raw.mean()) / raw.std()).tolist()
    reward = PreferenceReward(str(final))
    prompts = [Rendering().prompt_text(tokenizer, p.prompt) for p in pairs[:2]]
    assert reward(prompts, [p.chosen for p in pairs[:2]], [[], []]) == pytest.approx(expected, abs=1e-5)
    by_messages = PreferenceReward(str(final), messages_column="conversation")
    values = by_messages(["ignored", "ignored"], [p.chosen for p in pairs[:2]], [[], []],
                         conversation=[p.prompt for p in pairs[:2]])
    assert values == pytest.approx(expected, abs=1e-5)
    assert PreferenceReward(str(final), normalize=False)(prompts[:1], [pairs[0].chosen], [[]]) == pytest.approx(
        [raw[0].item()], abs=1e-5)


@pytest.mark.parametrize("lora", [{}, {"r": 4, "target_modules": ["q_proj", "v_proj"]}], ids=["full", "lora"])
def test_resume_continues_exactly(tiny_model_dir, tmp_path, lora):
    from llm_pg.training.reward_model import train_reward_model

    def run(folder, steps, resume=False):
        values = yaml.safe_load(rm_config(tmp_path, tiny_model_dir, max_steps=steps, save_every=2,
                                          lr_scheduler="constant", eval_split="", lora=lora,
                                          output_dir=str(tmp_path / folder)).read_text())
        return train_reward_model(config_from_dict(values), resume=resume)

    run("straight", 4)
    run("resumed", 2)
    with open(tmp_path / "resumed" / "rm_metrics.jsonl", "a") as log:  # logged after the checkpoint, then killed
        log.write('{"step": 3, "rm/loss": 9.0}\n{"step": 4, "rm/lo')
    run("resumed", 4, resume=True)
    a = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "final" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0)
    log = [json.loads(line) for line in (tmp_path / "resumed" / "rm_metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in log] == [1, 2, 3, 4] and log[2]["rm/loss"] != 9.0


def test_lora_reward_model_saves_merged_weights(tiny_model_dir, tmp_path):
    pytest.importorskip("peft")
    from llm_pg.training.reward_model import train_reward_model

    values = yaml.safe_load(rm_config(tmp_path, tiny_model_dir, max_steps=3, eval_split="",
                                      lora={"r": 4, "target_modules": ["q_proj", "v_proj"]}).read_text())
    train_reward_model(config_from_dict(values))
    final = tmp_path / "rm" / "final"
    assert not (final / "adapter_config.json").exists()
    weights = load_file(final / "model.safetensors")
    base = load_file(tiny_model_dir / "model.safetensors")
    assert not any("lora" in k for k in weights)
    assert not torch.equal(weights["model.layers.0.self_attn.q_proj.weight"],
                           base["model.layers.0.self_attn.q_proj.weight"])  # the adapters were merged in
    assert "score.weight" in weights  # the head trained and saved beside the merged trunk
    assert len(PreferenceReward(str(final))(["the cat sees"], [" the ball."], [[]])) == 1  # loads as a reward


@pytest.mark.parametrize("override, message", [
    ("rm.batch_size=0", "rm.batch_size: must be >= 1"),
    ("rm.lr_scheduler=steps", "rm.lr_scheduler: 'steps' is not one of"),
    ("rm.lr_scheduler=constant rm.warmup_steps=3", "rm.warmup_steps: has no effect with rm.lr_scheduler=constant"),
    ("rm.format=csv", "rm.format: 'csv' is not one of"),
    ('rm.source=""', "rm.source: name the preference pairs"),
])
def test_bad_rm_settings_are_one_line(tiny_model_dir, tmp_path, override, message, capsys):
    """In-process (helpers.cli_main): the refusal is tested, not the process (`llm-pg rm`'s own process runs in
    test_rm_then_train_with_the_saved_reward_model)."""
    from helpers import assert_one_line_error

    assert cli_main("rm", "--config", rm_config(tmp_path, tiny_model_dir), *override.split()) == 2
    assert_one_line_error(capsys.readouterr().err, message)


def test_reward_model_component_needs_a_folder_written_by_rm(tiny_model_dir):
    from llm_pg.errors import ConfigError

    with pytest.raises(ConfigError, match="reward.reward_model.model: .* has no rm_settings.json"):
        PreferenceReward(str(tiny_model_dir))


def test_a_train_run_saved_before_the_rm_section_still_resumes(tiny_model_dir, tiny_data_file, tmp_path):
    """`llm-pg train` never reads rm.* or rlhf.*: their appearance (or a change) does not refuse --resume; other keys
    still do."""
    from helpers import tiny_config

    from llm_pg.config.resume import ResumeConfigError
    from llm_pg.runs.resume import check_resume

    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path)
    old = config.to_dict()
    del old["rm"], old["rlhf"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    assert {"rm.batch_size", "rlhf.output_dir"} <= set(check_resume(config, tmp_path, 0))
    old["training"]["seed"] = 7
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    with pytest.raises(ResumeConfigError, match="training.seed"):
        check_resume(config, tmp_path, 0)


def test_a_second_rm_into_the_same_folder_is_refused_in_one_line(tiny_model_dir, tmp_path, capsys):
    """In-process (helpers.cli_main), as above."""
    from helpers import assert_one_line_error

    config = rm_config(tmp_path, tiny_model_dir, max_steps=1, eval_split="")
    assert cli_main("rm", "--config", config) == 0
    capsys.readouterr()  # the first run's output
    assert cli_main("rm", "--config", config) == 2
    assert_one_line_error(capsys.readouterr().err, "rm.output_dir", "already holds a run", "--resume", "--overwrite")
    assert (tmp_path / "rm" / "final" / "rm_settings.json").exists()  # the first run is untouched


@pytest.mark.parametrize("name", ["hh_minilm.yaml", "hh_smollm2_subset.yaml"])
def test_reward_model_recipes_validate(name):
    from pathlib import Path

    from llm_pg.config.schema import load_config
    from llm_pg.training.reward_model import check_rm_config

    root = Path(__file__).resolve().parents[1]
    config = load_config(root / "configs" / "reward_model" / name)
    check_rm_config(config.rm)
    assert config.rm.source == "../shared/data/hh-rlhf-harmless" and config.rm.format == "transcript"
    assert config.rm.output_dir.startswith("runs/") and config.training.num_threads == 1


def test_two_processes_train_the_same_model_as_one_with_the_whole_batch(tiny_model_dir, tmp_path):
    """`accelerate launch` (configs/accelerate/cpu.yaml, two CPU processes): each process scores its half of every
    batch and DDP averages the gradients, so 2 processes x 2 pairs give the weights of 1 process x 4 pairs."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from helpers import cli_env

    root = Path(__file__).resolve().parents[1]
    settings = {"max_steps": 4, "lr_scheduler": "constant", "eval_split": ""}
    one = rm_config(tmp_path, tiny_model_dir, batch_size=4, output_dir=str(tmp_path / "one"), **settings)
    assert cli_main("rm", "--config", one) == 0  # the one-process side in this process: the launch is the test
    two = rm_config(tmp_path, tiny_model_dir, batch_size=2, output_dir=str(tmp_path / "two"), **settings)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(root / "configs" / "accelerate" / "cpu.yaml"), "-m", "llm_pg", "rm", "--config", str(two)]
    env = {**cli_env(), "ACCELERATE_USE_CPU": "true", "PYTHONPATH": str(root) + os.pathsep +
           os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(launch, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    a = load_file(tmp_path / "one" / "final" / "model.safetensors")
    b = load_file(tmp_path / "two" / "final" / "model.safetensors")
    base = load_file(tiny_model_dir / "model.safetensors")
    assert not torch.allclose(a["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])
    for name in a:  # summation order differs (measured: 1.2e-5 at most); unsynchronized halves differ by ~lr = 3e-3
        torch.testing.assert_close(a[name], b[name], atol=1e-4, rtol=0)


def _as_format(row: dict, kind: str) -> dict:
    if kind == "conversational":
        return {"prompt": [{"role": "user", "content": row["prompt"]}],
                "chosen": [{"role": "assistant", "content": row["chosen"]}],
                "rejected": {"role": "assistant", "content": row["rejected"]}}
    if kind == "transcript":
        return {k: f"\n\nHuman: {row['prompt']}\n\nAssistant: {row[k]}" for k in ("chosen", "rejected")}
    return row


def test_the_three_formats_train_the_same_reward_model(tiny_model_dir, tmp_path):
    """The same pairs written as strings, conversational messages and HH transcripts render to the same texts, so
    two steps on each give the same normalization statistics, to the last bit."""
    from llm_pg.training.reward_model import train_reward_model

    rows = [json.loads(line) for line in (write_tiny_pairs(tmp_path / "pairs") / "train.jsonl").read_text()
            .splitlines()]
    stats = {}
    for kind in ("strings", "conversational", "transcript"):
        folder = tmp_path / kind
        folder.mkdir()
        (folder / "train.jsonl").write_text("".join(json.dumps(_as_format(r, kind)) + "\n" for r in rows))
        values = yaml.safe_load(rm_config(tmp_path, tiny_model_dir, max_steps=2, eval_split="", source=str(folder),
                                          output_dir=str(tmp_path / f"rm_{kind}")).read_text())
        train_reward_model(config_from_dict(values))
        stats[kind] = rm_model.read_settings(tmp_path / f"rm_{kind}" / "final", "test")["normalization"]
    assert stats["strings"] == stats["conversational"] == stats["transcript"]


def test_reward_model_component_without_a_model_is_a_config_error(tiny_model_dir, tiny_data_file, tmp_path, capsys):
    """In-process (helpers.cli_main), as above."""
    from helpers import assert_one_line_error

    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(tiny_model_dir, tiny_data_file, tmp_path / "run", **{
        "reward.components": [{"name": "rm", "type": "reward_model"}]})))
    assert cli_main("train", "--config", config) == 2
    assert_one_line_error(capsys.readouterr().err, "reward.components[0].model: required for type 'reward_model'")
