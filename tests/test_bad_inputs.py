"""Bad data, models and rewards, runs that would end without learning, and eval --compare (issue 13, parts C, D
and E).  Each case runs the CLI: exit code 2, one line naming the field or file and the fix, no traceback, and no
final/ (nothing that looks like a result of a run that did not happen). As in tests/test_cli.py, the cases call
llm_pg.cli.main in-process (helpers.cli_main: the same code from argv to exit code, without ~4 s of imports each);
the cases that need a process of their own are real processes (a reward that calls sys.exit, eval's refusal of
different prompts, the evaluation into missing folders).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from helpers import assert_one_line_error, cli_main, run_cli, write_config_yaml

ONE_SPLIT = "data.split_fractions=[1.0, 0.0, 0.0]"  # every row is a training row


def rows_file(tmp: Path, *rows) -> Path:
    path = tmp / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GOOD = [{"prompt": "the cat sees", "reference": "a tree."}, {"prompt": "a dog likes", "reference": "the sun."}]

# case -> (a function of tmp_path giving the overrides, words the error line must contain)
DATA = {
    "null prompt": (lambda t: [f"data.source={rows_file(t, *GOOD, {'prompt': None, 'reference': 'x.'})}"],
                    ["data.prompt_field", "record 2", "None", "not text"]),
    "a JSONL line that is a string": (
        lambda t: [f"data.source={rows_file(t, *GOOD, 'just a string')}"],
        ["data.source", "rows.jsonl line 3 is a JSON str, not an object", '{"prompt": ..., "reference": ...}']),
    "invalid UTF-8": (lambda t: [f"data.source={latin1_file(t)}"],
                      ["data.source", "latin1.jsonl line 2 is not UTF-8", "0xe9", "save the file as UTF-8"]),
    "every prompt empty": (lambda t: [f"data.source={rows_file(t, *[{**r, 'prompt': ' '} for r in GOOD])}"],
                           ["data.prompt_field", "every 'prompt' in split 'train'", "is empty"]),
}


def latin1_file(tmp: Path) -> Path:
    path = tmp / "latin1.jsonl"
    path.write_bytes(json.dumps(GOOD[0]).encode() + b'\n{"prompt": "caf\xe9", "reference": "x."}\n')
    return path


def model_copy(tmp: Path, model_dir: Path) -> Path:
    folder = tmp / "model"
    shutil.copytree(model_dir, folder)
    return folder


def truncated(tmp, model_dir):
    folder = model_copy(tmp, model_dir)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:len(data) // 3])
    return folder


def garbage(tmp, model_dir):
    folder = model_copy(tmp, model_dir)
    (folder / "model.safetensors").write_bytes(random.Random(0).randbytes(5000))
    return folder


def missing_tensor(tmp, model_dir):
    from safetensors.torch import load_file, save_file

    folder = model_copy(tmp, model_dir)
    weights = load_file(str(folder / "model.safetensors"))
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def bert(tmp, model_dir):
    from transformers import BertConfig, BertForMaskedLM

    folder = tmp / "bert"
    BertForMaskedLM(BertConfig(vocab_size=160, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64)).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model_dir / name, folder / name)
    return folder


def not_a_tokenizer(tmp, model_dir):
    folder = model_copy(tmp, model_dir)
    (folder / "tokenizer.json").write_text('{"a": 1}')  # JSON, but not a tokenizer: transformers raises KeyError
    return folder


def empty(tmp, model_dir):
    (tmp / "empty").mkdir()
    return tmp / "empty"


MODELS = {
    "truncated safetensors": (truncated, ["model.name_or_path", "damaged or truncated", "restore it"]),
    "garbage safetensors": (garbage, ["model.name_or_path", "damaged or truncated"]),
    "a checkpoint missing a tensor": (missing_tensor, ["model.name_or_path", "lacks 1 weight(s)",
                                                       "model.layers.1.mlp.up_proj.weight", "incomplete"]),
    "a BERT folder": (bert, ["model.name_or_path", "BertForMaskedLM, not a causal language model", "ForCausalLM"]),
    "a tokenizer.json that is no tokenizer": (not_a_tokenizer, ["model.name_or_path: cannot load the tokenizer of",
                                                                "KeyError"]),
    "an empty folder": (empty, ["model.name_or_path: no config.json in", "holds nothing", "config.json and weights"]),
}


def reward_file(tmp: Path, body: str) -> str:
    path = tmp / "my_reward.py"
    path.write_text(f"import sys\n\ndef fn(prompts, completions, references):\n    {body}\n")
    return f'reward.components=[{{name: mine, function: "{path}:fn"}}]'


REWARDS = {  # 2 prompts x 2 samples = 4 completions per step
    "a reward of 1e300": ("return [1e300] * len(completions)",
                          ["reward 'mine' returned 1e+300 for sample 0", "float32", "reward.on_error=penalty"]),
    "a reward that calls sys.exit(0)": ("sys.exit(0)", ["reward 'mine' called sys.exit(0)", "cannot end the run"]),
    "a reward that returns None": ("return None", ["reward 'mine' returned NoneType None",
                                                   "a list of 4 numbers, one per completion"]),
    "a reward that returns [None, ...]": ("return [None] * len(completions)",
                                          ["reward 'mine' returned None for sample 0", "a number"]),
    "every update skipped": ("return [3e38 if i % 2 else -3e38 for i in range(len(completions))]",
                             ["training: every update of steps 1..2 was skipped", "no final/ was written",
                              "the reward's values"]),
}


@pytest.fixture
def config(tiny_model_dir, tiny_data_file, tmp_path):
    return write_config_yaml(tmp_path / "c.yaml", tiny_model_dir, tiny_data_file, tmp_path / "run",
                             **{"training.max_steps": 2})


def train_fails(config, tmp_path, overrides, needles, capsys, process: bool = False) -> str:
    """`llm-pg train` ends with exit code 2 and one error line: in this process, or in a real one (`process`)."""
    if process:
        result = run_cli("train", "--config", config, *overrides, cwd=tmp_path)
        code, stderr = result.returncode, result.stderr
    else:
        code = cli_main("train", "--config", config, *overrides)
        stderr = capsys.readouterr().err
    assert code == 2, stderr[-3000:]
    assert_one_line_error(stderr, *needles)
    assert not (tmp_path / "run" / "final").exists()
    return stderr


@pytest.mark.parametrize("name", list(DATA))
def test_bad_data_is_one_line(name, config, tmp_path, capsys):
    overrides, needles = DATA[name]
    train_fails(config, tmp_path, [ONE_SPLIT, *overrides(tmp_path)], needles, capsys)
    assert not (tmp_path / "run").exists()  # failed before writing: no run folder is left


@pytest.mark.parametrize("name", list(MODELS))
def test_bad_models_are_one_line(name, config, tmp_path, tiny_model_dir, capsys):
    make, needles = MODELS[name]
    train_fails(config, tmp_path, [f"model.name_or_path={make(tmp_path, tiny_model_dir)}"], needles, capsys)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", list(REWARDS))
def test_rewards_cannot_end_a_run_silently(name, config, tmp_path, capsys):
    body, needles = REWARDS[name]
    # sys.exit in a reward would end a real process: that case runs as one
    train_fails(config, tmp_path, [reward_file(tmp_path, body)], needles, capsys, process="sys.exit" in name)
    if name == "every update skipped":  # the skipped updates' state is checkpointed, and the log says why
        assert (tmp_path / "run" / "checkpoints" / "step-000002").is_dir()
        assert [json.loads(line)["train/skipped_update"] for line in
                (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [1.0, 1.0]


@pytest.fixture(scope="module")
def evaluation(tiny_model_dir, tiny_data_file, tmp_path_factory) -> Path:
    """One `llm-pg eval` of the tiny model, written into folders that do not exist yet."""
    tmp = tmp_path_factory.mktemp("eval")
    config = write_config_yaml(tmp / "c.yaml", tiny_model_dir, tiny_data_file, tmp / "run")
    output = tmp / "not" / "yet" / "eval.json"
    result = run_cli("eval", "--model", tiny_model_dir, "--config", config, "--output", output, cwd=tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    return output


def test_eval_output_into_a_missing_folder_is_created(evaluation):
    assert json.loads(evaluation.read_text())["scores"]["num_samples"] > 1
    assert evaluation.with_suffix(".jsonl").is_file() and not evaluation.with_suffix(".json.lock").exists()


def rewrite(source: Path, target: Path, change) -> Path:
    rows = [json.loads(line) for line in source.with_suffix(".jsonl").read_text().splitlines()]
    target.write_text("".join(json.dumps(r) + "\n" for r in change(rows)))
    return target


def test_compare_pairs_by_prompt_and_refuses_different_prompts(evaluation, tmp_path, capsys):
    from llm_pg.cli import main

    shuffled = rewrite(evaluation, tmp_path / "shuffled.jsonl", lambda rows: rows[::-1])
    assert main(["eval", "--compare", str(evaluation), str(shuffled), "--resamples", "50", "--output",
                 str(tmp_path / "c.json")]) == 0  # in-process: the refusal below is the case that needs a process
    differences = json.loads((tmp_path / "c.json").read_text())["differences"]
    assert all(d["difference"] == 0 for d in differences)  # the same generations, matched by prompt: no difference

    other = rewrite(evaluation, tmp_path / "other.jsonl",  # the same count and ids, other prompts
                    lambda rows: [{**r, "prompt": r["prompt"] + " again"} for r in rows])
    result = run_cli("eval", "--compare", evaluation, other, "--output", tmp_path / "d.json", cwd=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "eval --compare", "evaluations of different prompts", "no partner",
                          "evaluate both on the same prompts")
    assert not (tmp_path / "d.json").exists()


def test_a_completion_longer_than_the_context_names_max_new_tokens(config, tmp_path, capsys):
    """No prompt length could fit: the fix is generation.max_new_tokens, not a negative max_prompt_tokens."""
    train_fails(config, tmp_path, ["generation.max_new_tokens=300"],
                ["generation.max_new_tokens: 300 new tokens do not fit the model's context of 256 tokens",
                 "< 256"], capsys)


def test_eval_of_a_split_that_one_file_does_not_have(config, tmp_path, capsys, tiny_model_dir):
    from llm_pg.cli import main

    assert main(["eval", "--model", str(tiny_model_dir), "--config", str(config), "--split", "tset",
                 "--output", str(tmp_path / "e.json")]) == 2
    assert_one_line_error(capsys.readouterr().err, "split 'tset' is not one of ['train', 'validation', 'test']",
                          "data.split_fractions")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]
