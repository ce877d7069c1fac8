"""`llm-pg dpo` (llm_pg/training/dpo.py): the answers' summed log-probs against a one-at-a-time loop, the pairs
rendered as RL renders its prompts, a tiny policy that learns the preferred answers while its reference stays the
start bit for bit, and the command as a user runs it."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers import assert_one_line_error, run_cli, tiny_config, write_tiny_pairs
from llm_pg.data.preferences import PreferencePair
from llm_pg.data.prompts import load_examples
from llm_pg.training import dpo as dpo_module
from llm_pg.training.dpo import DPOPair, answer_logprobs, dpo_pairs, train_dpo


def one_at_a_time(model, pair_ids: tuple[list[int], list[int]]) -> float:
    """sum over the answer's tokens of log softmax(logits)[token], one unpadded sequence, by hand."""
    prompt, answer = pair_ids
    ids = torch.tensor([prompt + answer])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0].float().log_softmax(-1)  # (L, V)
    return sum(logp[len(prompt) + t - 1, token].item() for t, token in enumerate(answer))


def test_answer_logprobs_equal_the_per_example_sum_whatever_the_padding(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    # prompts of 2, 5 and 1 tokens, answers of 1 to 4 tokens: every row is padded on the left, the right, or both
    batch = [DPOPair([1, 40, 41], [50, 51, 2], [60, 2]), DPOPair([1, 40, 41, 42, 43, 44], [52, 2], [61, 62, 63, 2]),
             DPOPair([1], [53], [64, 65])]
    with torch.no_grad():
        chosen, rejected = answer_logprobs(model, batch, pad_id=0, device="cpu")
    assert chosen.shape == rejected.shape == (3,)
    for i, p in enumerate(batch):
        assert chosen[i].item() == pytest.approx(one_at_a_time(model, (p.prompt_ids, p.chosen_ids)), abs=1e-4)
        assert rejected[i].item() == pytest.approx(one_at_a_time(model, (p.prompt_ids, p.rejected_ids)), abs=1e-4)
    alone, _ = answer_logprobs(model, batch[2:], pad_id=0, device="cpu")  # no padding at all
    assert alone[0].item() == pytest.approx(chosen[2].item(), abs=1e-5)


def test_pairs_are_rendered_as_sft_and_rl_read_their_prompts(tiny_model_dir, tmp_path):
    config = tiny_config(tiny_model_dir, tmp_path / "d.jsonl", tmp_path, **{"data.max_prompt_tokens": 6,
                                                                            "dpo.max_completion_length": 3})
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = [{"role": "user", "content": "the cat sees"}, {"role": "assistant", "content": "a dog."},
              {"role": "user", "content": "the girl likes"}]
    (tmp_path / "d.jsonl").write_text(json.dumps({"messages": prompt, "reference": "x"}) + "\n")
    expected = load_examples(config.data, "train", tokenizer)[0].prompt_ids  # what RL samples from
    (got,) = dpo_pairs([PreferencePair(prompt, "the red apple.", "a big house.")], config, tokenizer)
    assert got.prompt_ids == expected and len(expected) == 6  # cut from the left to data.max_prompt_tokens
    eos = tokenizer.eos_token_id
    assert got.chosen_ids == (tokenizer("the red apple.", add_special_tokens=False)["input_ids"] + [eos])[:3]
    assert got.rejected_ids == (tokenizer("a big house.", add_special_tokens=False)["input_ids"] + [eos])[:3]
    short = dpo_pairs([PreferencePair(prompt, "a.", "")], config, tokenizer)
    assert short == []  # an empty answer has nothing to compare


def dpo_config(model_dir, tmp_path, **overrides):
    pairs = write_tiny_pairs(tmp_path / "pairs")
    values = {"rm.source": str(pairs), "dpo.output_dir": str(tmp_path / "dpo"), "dpo.max_steps": 12,
              "dpo.batch_size": 8, "dpo.learning_rate": 3e-3, "dpo.beta": 0.5, **overrides}
    return tiny_config(model_dir, tmp_path / "unused.jsonl", tmp_path / "rl", **values)


def test_dpo_learns_the_preferred_answers_and_leaves_the_reference_as_it_started(tiny_model_dir, tmp_path,
                                                                                  monkeypatch):
    loaded = []
    real_load = dpo_module.load_policy
    monkeypatch.setattr(dpo_module, "load_policy", lambda cfg: loaded.append(real_load(cfg)) or loaded[-1])
    final = train_dpo(dpo_config(tiny_model_dir, tmp_path))
    policy, reference = loaded
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert all(torch.equal(t, start[k]) for k, t in reference.state_dict().items())  # bit for bit
    trained = AutoModelForCausalLM.from_pretrained(final).state_dict()
    assert not all(torch.equal(t, start[k]) for k, t in trained.items())
    rows = [json.loads(line) for line in (tmp_path / "dpo" / "dpo_metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 13))
    # step 1 scores the start against itself: every implicit reward is 0 and the loss is log 2
    assert rows[0]["dpo/loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert rows[0]["dpo/rewards_margin"] == 0.0
    first, last = rows[:3], rows[-3:]
    mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
    assert mean(last, "dpo/loss") < 0.5 * mean(first, "dpo/loss"), rows
    assert mean(last, "dpo/rewards_margin") > mean(first, "dpo/rewards_margin") + 1.0, rows
    assert mean(last, "dpo/rewards_accuracy") > 0.75


def test_dpo_command_writes_its_run_folder_and_refuses_a_second_run(tiny_model_dir, tmp_path):
    config = dpo_config(tiny_model_dir, tmp_path, **{"dpo.max_steps": 2, "dpo.loss_type": "ipo"})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    done = run_cli("dpo", "--config", tmp_path / "c.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "dpo"
    assert f"DPO policy: {out / 'final'}" in done.stdout
    assert (out / "final" / "model.safetensors").is_file() and (out / "final" / "tokenizer.json").is_file()
    assert yaml.safe_load((out / "config.yaml").read_text())["dpo"]["loss_type"] == "ipo"
    assert len((out / "dpo_metrics.jsonl").read_text().splitlines()) == 2
    assert json.loads((out / ".llm_pg_run.json").read_text())["kind"] == "dpo"
    again = run_cli("dpo", "--config", tmp_path / "c.yaml", cwd=tmp_path)
    assert again.returncode == 2
    assert_one_line_error(again.stderr, "dpo.output_dir", "already holds a run", "--overwrite")


@pytest.mark.parametrize("override, needle", [
    ("dpo.loss_type=kto", "dpo.loss_type: 'kto' is not one of ('sigmoid', 'ipo', 'hinge')"),
    ("dpo.beta=-0.1", "dpo.beta: must be > 0"),
    ("dpo.label_smoothing=0.5", "dpo.label_smoothing: must lie in [0, 0.5)"),
    ("rm.source=", "rm.source: name the preference pairs DPO learns from"),
])
def test_bad_dpo_settings_are_one_line_and_take_no_folder(tiny_model_dir, tmp_path, override, needle):
    config = dpo_config(tiny_model_dir, tmp_path)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    done = run_cli("dpo", "--config", tmp_path / "c.yaml", override, cwd=tmp_path)
    assert done.returncode == 2
    assert_one_line_error(done.stderr, needle)
    assert not (tmp_path / "dpo").exists()


def test_dropout_stays_off_so_the_first_step_compares_the_start_with_itself(tiny_model_dir, tmp_path):
    """A model with attention dropout: were it on, the policy's first log-probs would differ from the reference's
    (dropout-free) ones and the first loss would miss log 2 (TRL's disable_dropout, RL's eval mode)."""
    import shutil

    model_dir = tmp_path / "dropout_model"
    shutil.copytree(tiny_model_dir, model_dir)
    settings = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**settings, "attention_dropout": 0.5}))
    train_dpo(dpo_config(model_dir, tmp_path, **{"dpo.max_steps": 1}))
    (row,) = [json.loads(line) for line in (tmp_path / "dpo" / "dpo_metrics.jsonl").read_text().splitlines()]
    assert row["dpo/loss"] == pytest.approx(math.log(2), abs=1e-6) and row["dpo/rewards_margin"] == 0.0


def test_a_dpo_folder_is_known_by_its_metrics_without_a_marker_and_other_commands_stay_out(tiny_model_dir,
                                                                                          tmp_path):
    from llm_pg.runs.folder import RunFolderError, infer_kind, open_run
    from llm_pg.training.sft import train_sft

    folder = tmp_path / "dpo"
    folder.mkdir()
    (folder / "dpo_metrics.jsonl").write_text("")
    assert infer_kind(folder) == "dpo"  # a run written before kind markers, or with its marker lost
    config = dpo_config(tiny_model_dir, tmp_path)
    with pytest.raises(RunFolderError, match=r"holds an `llm-pg dpo` policy .* not an `llm-pg sft` model"):
        train_sft(config, folder)
    with open_run(config, "dpo", overwrite=True):  # --overwrite empties it for the new run
        assert not (folder / "dpo_metrics.jsonl").exists()
