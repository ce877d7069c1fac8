"""Test helpers: a tiny, offline Llama policy with a locally trained tokenizer, and a tiny training config.

Everything here is built on the fly (no network, no files outside tmp dirs), deterministic, and small enough that a
3-step training run takes about a second on one CPU thread.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SHARED = Path(os.environ.get("LLM_PG_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
TINYSTORIES = SHARED / "models" / "tinystories-656k"
requires_tinystories = pytest.mark.skipif(
    not (TINYSTORIES / "config.json").exists(),
    reason="../shared (LLM_PG_SHARED) is absent: the real tinystories model is needed")

SUBJECTS = ["the cat", "a dog", "the girl", "a boy", "the bird", "my friend", "the old man", "a little fox"]
VERBS = ["sees", "likes", "finds", "eats", "jumps over", "plays with", "runs to", "looks at"]
OBJECTS = ["the ball", "a tree", "the red apple", "a big house", "the river", "some bread", "the sun", "a small box"]
SENTENCES = [f"{s} {v} {o}." for s in SUBJECTS for v in VERBS for o in OBJECTS]  # 512 short sentences
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0, 1, 2, 3


def build_tokenizer(pad_token: str = "<pad>"):
    """A byte-level BPE tokenizer trained on SENTENCES; adds <s> in front of every text, like Llama's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(SENTENCES, trainers.BpeTrainer(vocab_size=160, special_tokens=SPECIAL_TOKENS,
                                                           show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token=pad_token,
                                   unk_token="<unk>")


def word_tokenizer():
    """A word-level tokenizer of "w0" .. "w49" (ids 3..52) with <pad> 0, <unk> 1, </s> 2: one token per word."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(50)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="</s>")


def build_model(tokenizer, steps: int = 20):
    """LlamaForCausalLM (hidden 32, 2 layers), briefly trained as an LM on SENTENCES + EOS.

    20 steps make the policy non-trivial but still random: position-dependent log-probs (so a position-id or
    padding bug shows up far above 1e-4), about 1.5 nats of entropy per token (so two samples of one prompt
    usually differ and baselines see different rewards), and an EOS after many sentences while about a third
    of 6-token completions are truncated (so completions end both ways).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    rows = [tokenizer(s)["input_ids"] + [tokenizer.eos_token_id] for s in SENTENCES]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])  # right-padded
    mask = (torch.arange(width)[None] < torch.tensor([len(r) for r in rows])[:, None]).long()
    labels = ids.masked_fill(mask == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        idx = torch.randperm(len(rows), generator=g)[:64]
        model(input_ids=ids[idx], attention_mask=mask[idx], labels=labels[idx]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return model


def save_tiny_model(path: Path, pad_token: str = "<pad>") -> Path:
    tokenizer = build_tokenizer(pad_token)
    model = build_model(tokenizer)
    model.config.pad_token_id = model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def write_tiny_data(path: Path, n: int = 24) -> Path:
    """n rows {"id", "prompt": "<subject> <verb>", "reference": "<object>."} made of the tokenizer's words."""
    rows = [{"id": f"r{i}", "prompt": f"{SUBJECTS[i % 8]} {VERBS[(3 * i) % 8]}",
             "reference": f"{OBJECTS[(5 * i + 1) % 8]}."} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_tiny_pairs(folder, n_train=32, n_test=16):
    """{prompt, chosen, rejected}: the chosen answer names one of the first four objects, the rejected one of the
    last four, so a reward model can learn which words are preferred."""
    folder.mkdir(exist_ok=True)
    for split, n, offset in (("train", n_train, 0), ("test", n_test, 3)):
        rows = [{"prompt": f"{SUBJECTS[(i + offset) % 8]} {VERBS[(3 * i) % 8]}",
                 "chosen": f"{OBJECTS[(i + offset) % 4]}.", "rejected": f"{OBJECTS[4 + (5 * i + offset) % 4]}."}
                for i in range(n)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


# A run where no update can change the policy exits 2 without a final/ (training/rl.py). A tiny random model often
# scores 0 on every completion for a step or two, so a test about something else adds an entropy bonus: its
# gradient is never 0, whatever the rewards are.
CAN_LEARN = {"algorithm.entropy_coef": 0.01}


def tiny_config_dict(model_dir, data_file, output_dir, **overrides) -> dict:
    """The tiny run as a nested dict; overrides are dotted keys: tiny_config_dict(..., **{"training.seed": 3})."""
    values = {
        "model": {"name_or_path": str(model_dir)},
        "data": {"source": str(data_file), "use_chat_template": False},
        "generation": {"num_samples": 2, "max_new_tokens": 6},
        "training": {"output_dir": str(output_dir), "max_steps": 3, "prompts_per_step": 2, "learning_rate": 1e-2,
                     "num_threads": 1, "mixed_precision": "no"},  # exact float32 comparisons; bf16 is tested alone
        "evaluation": {"before_training": False, "after_training": False, "meaning_encoder": "none"},
    }
    for key, value in overrides.items():
        node = values
        *sections, last = key.split(".")
        for part in sections:
            node = node.setdefault(part, {})
        node[last] = value
    return values


def pipeline_values(tmp_path, pairs, out, **overrides) -> dict:
    """The tiny `llm-pg rlhf` config as a nested dict (model=<folder> is required; section.key=value overrides)."""
    values = {
        "model": {"name_or_path": str(overrides.pop("model"))},
        "data": {"use_chat_template": False, "max_eval_samples": 6},
        "generation": {"num_samples": 2, "max_new_tokens": 6},
        "sft": {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-3},
        "rm": {"source": str(pairs), "batch_size": 4, "max_steps": 3, "learning_rate": 3e-3, "save_every": 2,
               "bootstrap_resamples": 50, "use_chat_template": False},
        "kl": {"coef": 0.1},
        "training": {"max_steps": 4, "save_every": 2, "prompts_per_step": 2, "learning_rate": 1e-2, "num_threads": 1,
                     "mixed_precision": "no", "seed": 0},
        "evaluation": {"eval_every": 2, "validation_samples": 4, "meaning_encoder": "none", "bootstrap_resamples": 50,
                       "batch_size": 8},
        "rlhf": {"output_dir": str(out), "validation_pairs": 4, "compare_samples": 2},
    }
    for key, value in overrides.items():
        section, name = key.split(".")
        values.setdefault(section, {})[name] = value
    return values


def tiny_config(model_dir, data_file, output_dir, **overrides):
    """A validated TrainConfig for a 3-step run of the tiny model (see tiny_config_dict for overrides)."""
    from llm_pg.config.schema import config_from_dict

    return config_from_dict(tiny_config_dict(model_dir, data_file, output_dir, **overrides))


def write_config_yaml(path: Path, model_dir, data_file, output_dir, **overrides) -> Path:
    """The tiny config as a YAML file, as a user passes it to --config (overrides as in tiny_config_dict)."""
    import yaml

    path.write_text(yaml.safe_dump(tiny_config(model_dir, data_file, output_dir, **overrides).to_dict(),
                                   sort_keys=False))
    return path


def cli_env() -> dict:
    """The environment of a CLI subprocess: one thread, offline."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def cli_command(*args) -> list[str]:
    return [sys.executable, "-m", "llm_pg", *map(str, args)]


_FORK_SERVERS: dict = {}  # environment -> its fork server, most recently used last (see run_cli)


def _fork_server(env: dict):
    """A fork server (tests/forkserver.py) imported with `env`, or None when they are off. One per environment, as
    what is read at import time must be the caller's; the three used last are kept (one start costs about what one
    real subprocess does, so an environment used once loses nothing)."""
    if os.environ.get("LLM_PG_TEST_FORKSERVER") == "0" or sys.platform != "linux":
        return None
    from forkserver import ForkServer, environment_key

    key = environment_key(env)
    server = _FORK_SERVERS.pop(key, None) or ForkServer(env)
    _FORK_SERVERS[key] = server
    while len(_FORK_SERVERS) > 3:
        _FORK_SERVERS.pop(next(iter(_FORK_SERVERS))).close()
    return server if server.start() else None


def run_cli(*args, cwd, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m llm_pg ARGS` to completion, output captured: forked from this worker's fork server (its imports
    done once; see tests/forkserver.py), or a new interpreter when the environment differs from the server's."""
    import tempfile

    env = cli_env()
    server = _fork_server(env)
    if server is None:
        return subprocess.run(cli_command(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    with tempfile.TemporaryDirectory(prefix="llm_pg_cli_") as tmp:
        return server.run(args, cwd, env, timeout=timeout, tmp=Path(tmp))


def cli_main(*args) -> int:
    """`llm-pg ARGS` in this process: llm_pg.cli.main's exit code. The same code from argv to exit code as the console
    script, without a new interpreter's ~4 s of imports: for tests about a run's result or a refusal, not about the
    process (its error line goes to stderr, capsys reads it; its log to caplog)."""
    import torch

    from llm_pg.cli import main

    threads = torch.get_num_threads()  # a run sets the process's threads (training.num_threads): give them back,
    try:                               # or one test's run could leave this worker oversubscribed for the next ones
        return main(list(map(str, args)))
    finally:
        torch.set_num_threads(threads)


def assert_one_line_error(stderr: str, *needles: str) -> None:
    """Exactly one error line, the last thing printed, naming what to fix; no traceback."""
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if "llm-pg: error:" in line]
    assert len(errors) == 1, stderr
    assert errors[0].startswith("llm-pg: error:")
    assert stderr.rstrip().splitlines()[-1] == errors[0]
    for needle in needles:
        assert needle in errors[0], errors[0]
