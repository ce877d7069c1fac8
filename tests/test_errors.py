"""Bad input: every case prints exactly one line `llm-pg: error: ...` naming the field and the fix, exits with
code 2 and shows no traceback; `--debug` lets the exception through.

More cases live in tests/test_cli.py (unknown key, wrong type, missing config/data file, missing model,
leave_one_out with k=1, a scalar for a section). The cases here run `llm_pg.cli.main` in-process (the same code
path as the console script, without paying the imports again); one runs as a real process.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import assert_one_line_error, run_cli, write_config_yaml
from llm_pg.cli import main
from llm_pg.errors import ConfigError

ONE_SPLIT = {"data.split_fractions": [1.0, 0.0, 0.0]}  # every row is a training row, however few there are


@dataclass
class Case:
    tmp: Path
    config: Path  # the valid tiny config
    model_dir: Path  # the tiny model

    def file(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.write_text(text)
        return path

    def rows(self, *rows) -> str:
        """data.source=<a JSONL file of these rows>."""
        path = self.file("rows.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        return f"data.source={path}"

    def reward(self, body: str) -> str:
        """reward.components=<one custom reward whose body is given>."""
        path = self.file("my_reward.py", f"def fn(prompts, completions, references):\n    {body}\n")
        return f'reward.components=[{{name: mine, function: "{path}:fn"}}]'


def remote_code_model(case: Case, tokenizer: bool = True) -> str:
    """A model folder whose architecture exists only as code in the repository (auto_map)."""
    folder = case.tmp / "remote_model"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json") if tokenizer else ():
        shutil.copy(case.model_dir / name, folder / name)
    (folder / "config.json").write_text(json.dumps({
        "model_type": "my_secret_arch", "architectures": ["MySecretForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_secret.MySecretConfig",
                     "AutoModelForCausalLM": "modeling_secret.MySecretForCausalLM"}}))
    (folder / "configuration_secret.py").write_text("raise SystemExit('remote code ran')\n")
    return f"model.name_or_path={folder}"


BAD_JSONL = '{"prompt": "the cat", "reference": "a tree."}\n{"prompt": "a dog", "reference": }\n'
LONG_PROMPT = " ".join(["the old man plays with a big house"] * 60)  # ~ 500 tokens; the context is 256

# case -> (argv after `train --config <tiny.yaml>`, or a full argv; words the error line must contain)
CASES = {
    "invalid YAML": lambda c: (["train", "--config", str(c.file("bad.yaml", "model: [unclosed\n"))],
                               ["not valid YAML"]),
    "config is not a mapping": lambda c: (["train", "--config", str(c.file("list.yaml", "- a\n- b\n"))],
                                          ["top level must be a mapping"]),
    "override without =": lambda c: (["training.max_steps"], ["override 'training.max_steps'", "section.key=value"]),
    "misspelled section": lambda c: (["trainig.max_steps=3"], ["did you mean 'training'"]),
    "unknown baseline": lambda c: (["algorithm.baseline=median"], ["algorithm.baseline", "median"]),
    "top_p=0": lambda c: (["generation.top_p=0"], ["generation.top_p", "set it to 1.0", "evaluation.top_p"]),
    "top_k in training": lambda c: (["generation.top_k=5"], ["generation.top_k", "set it to 0", "evaluation.top_k"]),
    "kl estimator k1 in the loss": lambda c: (["kl.mode=loss", "kl.estimator=k1"], ["kl.estimator", "kl.estimator=k3"]),
    "kl estimator k3 in the reward": lambda c: (["kl.estimator=k3"], ["kl.estimator", "kl.estimator=k1"]),
    "accumulation does not divide the batch": lambda c: (["training.gradient_accumulation_steps=3"],
                                                         ["training.gradient_accumulation_steps", "divide"]),
    "negative learning rate": lambda c: (["training.learning_rate=-1e-5"], ["training.learning_rate", "> 0"]),
    "unknown reward name": lambda c: (["reward.components=[{name: meteor}]"], ["reward.components[0]", "meteor"]),
    "unknown reward option": lambda c: (["reward.components=[{name: rougeL, wieght: 2}]"],
                                        ["reward.components[0]", "wieght"]),
    "reward function without module": lambda c: (["reward.components=[{name: mine, function: fn}]"],
                                                 ["reward.components[0].function", "module:function"]),
    "reward module not importable": lambda c: (['reward.components=[{name: mine, function: "no_such_module:fn"}]'],
                                               ["cannot import 'no_such_module:fn'", "ModuleNotFoundError"]),
    "reward file not found": lambda c: ([f'reward.components=[{{name: mine, function: "{c.tmp}/nope.py:fn"}}]'],
                                        ["reward.components[0].function", "cannot import", "no such file"]),
    "reward raises": lambda c: ([c.reward("raise RuntimeError('boom')")],
                                ["reward 'mine' failed: RuntimeError: boom"]),
    "reward returns NaN": lambda c: ([c.reward("return [float('nan')] * len(completions)")],
                                     ["reward 'mine' returned nan", "must be finite"]),
    "reward returns too few values": lambda c: ([c.reward("return [0.5]")], ["reward 'mine' returned 1 values"]),
    "malformed JSONL line": lambda c: ([f"data.source={c.file('bad.jsonl', BAD_JSONL)}"],
                                       ["data.source", "line 2 is not valid JSON"]),
    "missing prompt field": lambda c: ([c.rows({"text": "the cat", "reference": "a tree."})],
                                       ["data.prompt_field", "no field 'prompt'"]),
    "missing reference field": lambda c: ([c.rows({"prompt": "the cat"})],
                                          ["data.reference_field", "no field 'reference'"]),
    "reference is not text": lambda c: ([c.rows({"prompt": "the cat", "reference": 3})],
                                        ["data.reference_field", "string or list of strings"]),
    "empty dataset": lambda c: ([f"data.source={c.file('empty.jsonl', '')}"], ["is empty"]),
    "unsupported data format": lambda c: ([f"data.source={c.file('rows.txt', 'the cat')}"],
                                          ["data.source", ".txt files are not supported"]),
    "unknown template placeholder": lambda c: (['data.prompt_template="{nope}: {prompt}"'],
                                               ["data.prompt_template", "'nope'"]),
    "prompt longer than the context": lambda c: ([c.rows({"prompt": LONG_PROMPT, "reference": "x."}),
                                                  "data.max_prompt_tokens=300"],
                                                 ["data.max_prompt_tokens", "context of 256 tokens", "<= 250"]),
    "model needs remote code": lambda c: ([remote_code_model(c)], ["model.name_or_path", "trust_remote_code"]),
    "model folder without a tokenizer": lambda c: ([remote_code_model(c, tokenizer=False)],
                                                   ["model.name_or_path", "tokenizer"]),
    "unknown dtype": lambda c: (["model.dtype=float8"], ["model.dtype", "float8"]),
}


@pytest.fixture
def case(tiny_model_dir, tiny_data_file, tmp_path) -> Case:
    return Case(tmp_path, write_config_yaml(tmp_path / "tiny.yaml", tiny_model_dir, tiny_data_file,
                                            tmp_path / "run", **ONE_SPLIT), tiny_model_dir)


def argv_of(name: str, case: Case) -> tuple[list[str], list[str]]:
    args, needles = CASES[name](case)
    return (args if args[0] == "train" else ["train", "--config", str(case.config), *args]), needles


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_exit_2(name, case, capsys):
    argv, needles = argv_of(name, case)
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert_one_line_error(captured.err, *needles)
    assert "remote code ran" not in captured.out + captured.err
    assert not (case.tmp / "run" / "final").exists()


def test_a_failing_reward_from_a_real_process(case):
    """After the model has loaded and a step has started: logs and progress bar first, the error line last."""
    argv, needles = argv_of("reward raises", case)
    result = run_cli(*argv, cwd=case.tmp)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, *needles)


@pytest.mark.parametrize("how", ["--debug", "LLM_PG_DEBUG"])
def test_debug_lets_the_exception_through(how, case, monkeypatch):
    argv, _ = argv_of("unknown baseline", case)
    if how == "LLM_PG_DEBUG":
        monkeypatch.setenv("LLM_PG_DEBUG", "1")
    with pytest.raises(ConfigError, match="algorithm.baseline"):
        main(["--debug", *argv] if how == "--debug" else argv)


def test_processes_that_do_not_join_are_refused(case, monkeypatch, capsys):
    """`accelerate launch --multi_gpu` on a machine without GPUs starts N processes that each see only itself:
    they would train N independent copies into one folder."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "--config", str(case.config)]) == 2
    assert_one_line_error(capsys.readouterr().err, "accelerate launch: 2 processes were started",
                          "ACCELERATE_USE_CPU=true")
    assert not (case.tmp / "run").exists()
