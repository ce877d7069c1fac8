"""Reliability guarantees (docs/reliability.md): exact resume after a crash, clean stops on SIGINT/SIGTERM,
atomic and self-checking checkpoints, the non-finite update guard, multi-process correctness and safe defaults.

Bad input (one-line errors, exit 2) is tested in tests/test_errors.py; gradient accumulation in
tests/test_training.py.
"""

from __future__ import annotations

import ast
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sacrebleu
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer
from safetensors.torch import load_file

import llm_pg
import llm_pg.rollout.decoding
import llm_pg.training.rl
import llm_pg.training.update
from helpers import (assert_one_line_error, cli_command, cli_env, run_cli, tiny_config, tiny_config_dict,
                     write_config_yaml)
from llm_pg.runs.checkpoint import checkpoint_dir, is_complete, latest_checkpoint, save_checkpoint
from llm_pg.cli import main
from llm_pg.config.schema import DataConfig, ModelConfig, config_from_dict
from llm_pg.data.prompts import load_examples, load_records
from llm_pg.errors import DataError
from llm_pg.models.policy import load_tokenizer
from llm_pg.rewards import REWARDS, RewardMix
from llm_pg.training.rl import TrainingDiverged, train

# Sampling at a temperature and a baseline with state: both must be restored for a resume to be exact.
RESUME = {"generation.temperature": 0.7, "algorithm.baseline": "moving_average", "training.save_every": 1,
          "training.keep_checkpoints": 5}
TIMING = ("time/", "speed/")  # metrics that are wall-clock measurements


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def tensors(folder) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "model.safetensors"))


def assert_bit_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def wait_for(condition, process: subprocess.Popen, timeout: float = 180.0) -> None:
    """Poll condition() every 10 ms while the process runs."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the process exited with {process.returncode} before the condition held"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def start(args, cwd, log: Path) -> subprocess.Popen:
    """`python -m llm_pg ARGS` in the background, stdout and stderr to files (pipes could fill and block it)."""
    return subprocess.Popen(cli_command(*args), cwd=cwd, env=cli_env(), stdout=open(log.with_suffix(".out"), "w"),
                            stderr=open(log.with_suffix(".err"), "w"), text=True)


# ---------------------------------------------------------------------------------------------------- resume


def test_resume_after_sigkill_is_bit_exact(tiny_model_dir, tiny_data_file, tmp_path):
    config = write_config_yaml(tmp_path / "c.yaml", tiny_model_dir, tiny_data_file, tmp_path / "killed", **RESUME)
    args = ["train", "--config", config, "training.max_steps=5"]
    reference = start([*args, f"training.output_dir={tmp_path / 'whole'}"], tmp_path, tmp_path / "whole")
    killed = start(args, tmp_path, tmp_path / "killed")
    wait_for(lambda: is_complete(checkpoint_dir(tmp_path / "killed", 2)), killed)
    killed.send_signal(signal.SIGKILL)  # no handler, no cleanup: as if the machine died
    assert killed.wait(60) == -signal.SIGKILL
    assert not (tmp_path / "killed" / "final").exists()
    reached = latest_checkpoint(tmp_path / "killed")
    assert reached is not None and reached.name < "step-000005"

    resumed = run_cli("train", "--config", config, "--resume", "training.max_steps=5", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {reached}" in resumed.stderr
    assert reference.wait(300) == 0, (tmp_path / "whole.err").read_text()[-3000:]

    assert_bit_equal(tensors(tmp_path / "killed" / "final"), tensors(tmp_path / "whole" / "final"))
    metrics, whole = read_metrics(tmp_path / "killed"), read_metrics(tmp_path / "whole")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5]  # each step logged once, none lost or repeated
    for mine, theirs in zip(metrics, whole):  # the same samples, rewards, losses and baseline at every step
        assert {k: v for k, v in mine.items() if not k.startswith(TIMING)} == \
            {k: v for k, v in theirs.items() if not k.startswith(TIMING)}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_and_sigint_stop_cleanly_with_a_checkpoint(sig, tiny_model_dir, tiny_data_file, tmp_path, capsys):
    run_dir = tmp_path / "run"
    config = write_config_yaml(tmp_path / "c.yaml", tiny_model_dir, tiny_data_file, run_dir,
                               **{"training.max_steps": 200, "training.save_every": 0})
    process = start(["train", "--config", config], tmp_path, tmp_path / "log")
    wait_for(lambda: (run_dir / "metrics.jsonl").exists() and (run_dir / "metrics.jsonl").read_text(), process)
    process.send_signal(sig)
    assert process.wait(120) == 0, (tmp_path / "log.err").read_text()[-3000:]

    stdout = (tmp_path / "log.out").read_text()
    assert f"Stopped by {sig.name} after step" in stdout and "--resume" in stdout
    reached = int(stdout.split("after step ")[1].split(";")[0])
    assert 1 <= reached < 200
    assert latest_checkpoint(run_dir) == checkpoint_dir(run_dir, reached) and is_complete(checkpoint_dir(run_dir,
                                                                                                        reached))
    assert [m["step"] for m in read_metrics(run_dir)] == list(range(1, reached + 1))
    assert not (run_dir / "final").exists()

    assert main(["train", "--config", str(config), "--resume", f"training.max_steps={reached + 1}"]) == 0
    assert [m["step"] for m in read_metrics(run_dir)] == list(range(1, reached + 2))
    assert (run_dir / "final" / "model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def four_steps(tiny_model_dir, tiny_data_file, tmp_path_factory):
    """A 4-step run that checkpoints every step and keeps 3: step-000002..4."""
    run_dir = tmp_path_factory.mktemp("four_steps")
    train(tiny_config(tiny_model_dir, tiny_data_file, run_dir, **{"training.max_steps": 4, "training.save_every": 1,
                                                                   "training.keep_checkpoints": 3}))
    return run_dir


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    shutil.copytree(run_dir, tmp_path / "run")
    return tmp_path / "run"


def test_keep_checkpoints_and_safetensors_only(four_steps, tiny_model_dir, tiny_data_file, tmp_path):
    assert sorted(p.name for p in (four_steps / "checkpoints").iterdir()) == [f"step-00000{i}" for i in (2, 3, 4)]
    for folder in (four_steps / "checkpoints", four_steps / "final"):
        assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pkl"))
    assert (four_steps / "final" / "model.safetensors").is_file()
    assert (four_steps / "checkpoints" / "step-000004" / "model" / "model.safetensors").is_file()

    train(tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{"training.max_steps": 2, "training.save_every": 1,
                                                                    "training.keep_checkpoints": 1}))
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000002"]


@pytest.mark.parametrize("damage", ["no trainer_state.json", "garbage trainer_state.json", "no optimizer.pt",
                                    "no model"])
def test_a_damaged_newest_checkpoint_is_skipped(damage, four_steps, tmp_path, caplog):
    run_dir = copy_run(four_steps, tmp_path)
    newest = checkpoint_dir(run_dir, 4)
    if damage == "no trainer_state.json":
        (newest / "trainer_state.json").unlink()
    elif damage == "garbage trainer_state.json":
        (newest / "trainer_state.json").write_text('{"step": 4, "sampl')
    elif damage == "no optimizer.pt":
        (newest / "optimizer.pt").unlink()
    else:
        shutil.rmtree(newest / "model")
    assert latest_checkpoint(run_dir) == checkpoint_dir(run_dir, 3)
    assert f"checkpoint {newest} is incomplete or damaged; skipping it" in caplog.text


def test_temporary_folders_are_never_returned_and_resume_skips_damage(four_steps, tiny_model_dir, tiny_data_file,
                                                                      tmp_path, caplog):
    run_dir = copy_run(four_steps, tmp_path)
    # A complete-looking folder left by a save that died before its rename.
    shutil.copytree(checkpoint_dir(run_dir, 4), run_dir / "checkpoints" / ".tmp-step-000009-12345")
    assert latest_checkpoint(run_dir) == checkpoint_dir(run_dir, 4)
    for step in (2, 3, 4):
        (checkpoint_dir(run_dir, step) / "trainer_state.json").write_text("not json")
    assert latest_checkpoint(run_dir) is None

    (checkpoint_dir(run_dir, 3) / "trainer_state.json").write_text(
        (checkpoint_dir(four_steps, 3) / "trainer_state.json").read_text())
    caplog.set_level("INFO")
    train(tiny_config(tiny_model_dir, tiny_data_file, run_dir, **{"training.max_steps": 4}), resume=True)
    assert f"resumed from {checkpoint_dir(run_dir, 3)} at step 3" in caplog.text
    assert [m["step"] for m in read_metrics(run_dir)] == [1, 2, 3, 4]


def test_a_save_that_dies_half_way_leaves_the_previous_checkpoint_latest(four_steps, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

    run_dir = copy_run(four_steps, tmp_path)
    model = AutoModelForCausalLM.from_pretrained(checkpoint_dir(run_dir, 4) / "model")
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir(run_dir, 4) / "model")
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = get_scheduler("constant", optimizer)
    real_save = torch.save

    def dying_save(obj, path, *args, **kwargs):
        if Path(path).name == "scheduler.pt":
            raise OSError("disk full")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(run_dir, 5, model, tokenizer, optimizer, scheduler, {}, keep=3)
    assert not checkpoint_dir(run_dir, 5).exists()  # only a .tmp- folder, which nothing reads
    assert [p.name for p in (run_dir / "checkpoints").glob(".tmp-*")] == [f".tmp-step-000005-{os.getpid()}"]
    assert latest_checkpoint(run_dir) == checkpoint_dir(run_dir, 4)
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step-*")) == [f"step-00000{i}" for i in (2, 3, 4)]


# ------------------------------------------------------------------------------------------- numerical guard


def nan_on_updates(monkeypatch, bad_calls):
    """Make the update's forward pass return NaN log-probs on the updates numbered in bad_calls (1-based)."""
    real, calls = llm_pg.training.update.completion_outputs, []

    def patched(*args, **kwargs):
        scores = real(*args, **kwargs)
        if kwargs.get("with_entropy"):  # the policy update's pass
            calls.append(1)
            if bad_calls == "all" or len(calls) in bad_calls:
                scores.logprobs = scores.logprobs * float("nan")
        return scores

    monkeypatch.setattr(llm_pg.training.update, "completion_outputs", patched)
    return calls


def test_one_non_finite_update_is_skipped(tiny_model_dir, tiny_data_file, tmp_path, monkeypatch, caplog):
    calls = nan_on_updates(monkeypatch, {2})
    train(tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{"training.max_steps": 3, "training.save_every": 1,
                                                                    "training.keep_checkpoints": 3}))
    assert len(calls) == 3
    metrics = read_metrics(tmp_path)
    assert [m["train/skipped_update"] for m in metrics] == [0.0, 1.0, 0.0]
    assert math.isnan(metrics[1]["loss/policy"])
    assert "update skipped" in caplog.text
    step1, step2, step3 = (tensors(checkpoint_dir(tmp_path, s) / "model") for s in (1, 2, 3))
    assert_bit_equal(step1, step2)  # step 2 changed nothing
    assert any(not torch.equal(step2[k], step3[k]) for k in step2)  # step 3 trained again
    assert all(torch.isfinite(t).all() for t in tensors(tmp_path / "final").values())


def test_non_finite_updates_in_a_row_stop_training(tiny_model_dir, tiny_data_file, tmp_path, monkeypatch, capsys):
    nan_on_updates(monkeypatch, "all")
    config = write_config_yaml(tmp_path / "c.yaml", tiny_model_dir, tiny_data_file, tmp_path / "run",
                               **{"training.max_steps": 10, "training.max_bad_updates": 2})
    assert main(["train", "--config", str(config)]) == 2
    assert_one_line_error(capsys.readouterr().err, "training: 2 non-finite updates in a row at step 2",
                          "training.learning_rate")
    run_dir = tmp_path / "run"
    assert [m["train/skipped_update"] for m in read_metrics(run_dir)] == [1.0, 1.0]
    assert latest_checkpoint(run_dir) == checkpoint_dir(run_dir, 2) and not (run_dir / "final").exists()
    assert_bit_equal(tensors(checkpoint_dir(run_dir, 2) / "model"), tensors(tiny_model_dir))  # never updated

    with pytest.raises(TrainingDiverged):  # --debug: the exception itself, with its traceback
        main(["--debug", "train", "--config", str(config), "--overwrite", "training.max_bad_updates=1"])


# --------------------------------------------------------------------------------------------- multi-process


_PORTS_TAKEN = []  # ports this test process has handed out


def free_port() -> int:
    """A free TCP port for a 2-process launch's rendezvous, below the kernel's ephemeral range (32768-60999).

    A port the kernel hands out (`bind(0)`) is released before `accelerate launch` binds it, and in that gap the
    kernel may give it to any outgoing connection, such as another test's ranks reaching their own rendezvous.
    Ports below the ephemeral range are never handed out by the kernel, and each pytest-xdist worker draws from
    its own block of 1,000 in turn, so two tests running at once never pick the same port.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    block = 20000 + 1000 * (int(worker[2:]) % 12 if worker[2:].isdigit() else 0)
    for offset in range(len(_PORTS_TAKEN), len(_PORTS_TAKEN) + 1000):
        port = block + offset % 1000
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # in use by something else on the machine: the next one
                continue
        _PORTS_TAKEN.append(port)
        return port
    raise RuntimeError(f"no free port in {block}-{block + 999}")


def _argmax_sampling_cli(folder: Path) -> Path:
    """A script that runs `llm-pg` with the most likely token drawn instead of a random one."""
    script = folder / "argmax_llm_pg.py"
    script.write_text("import sys\nimport llm_pg.rollout.decoding\n"
                      "llm_pg.rollout.decoding.inverse_cdf_sample = lambda probs: probs.argmax(-1)\n"
                      "from llm_pg.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    return script


ALGORITHM_SETTINGS = {
    "reinforce": {"algorithm.whiten_advantages": True},  # whitened over the step's tokens, all processes
    "actor_critic": {"algorithm.name": "actor_critic", "critic.detach_trunk": False},  # the critic's grads cross DDP
    "ppo": {"algorithm.name": "ppo", "ppo.epochs": 2, "ppo.num_minibatches": 1},
}


@pytest.mark.parametrize("algorithm", list(ALGORITHM_SETTINGS))
def test_two_processes_equal_one_process_with_the_whole_batch(algorithm, tiny_model_dir, tiny_data_file, tmp_path,
                                                              monkeypatch):
    """2 processes x 2 prompts == 1 process x 4 prompts: same prompts, same global normalizer, DDP-averaged grads.

    Both runs draw the most likely token instead of a random one (`inverse_cdf_sample` patched, in the launched
    processes by a wrapper script), so they draw the same completions whatever their RNG streams; the policy that
    is scored and trained is still the whole softmax. The learning rate follows a cosine schedule with warm-up:
    both runs must log the same train/lr (the schedule once ran P times too fast with P processes).
    Accelerate 1.x starts ONE process for `accelerate launch --cpu --num_processes 2` (its multi-CPU launch
    needs mpirun); two gloo processes on CPU take `--multi_gpu` with ACCELERATE_USE_CPU=true.
    """
    same = {"algorithm.baseline": "moving_average",
            "algorithm.loss_reduction": "token_mean", "training.max_steps": 3, "training.lr_scheduler": "cosine",
            "training.warmup_steps": 1, **ALGORITHM_SETTINGS[algorithm]}
    config = write_config_yaml(tmp_path / "c.yaml", tiny_model_dir, tiny_data_file, tmp_path / "two", **same,
                               **{"training.prompts_per_step": 2})
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
              str(free_port()), str(_argmax_sampling_cli(tmp_path)), "train", "--config", str(config)]
    env = {**cli_env(), "ACCELERATE_USE_CPU": "true"}
    launcher = subprocess.Popen(launch, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
    try:
        _, stderr = launcher.communicate(timeout=240)
    except subprocess.TimeoutExpired:  # a hung rank: end the launcher and both workers, not just the launcher
        os.killpg(launcher.pid, signal.SIGKILL)
        raise
    assert launcher.returncode == 0, stderr[-4000:]

    two = tmp_path / "two"
    assert [m["step"] for m in read_metrics(two)] == [1, 2, 3]  # one writer: no line twice
    assert sorted(p.name for p in two.iterdir()) == [".llm_pg_run.json", "checkpoints", "config.yaml",
                                                     "config_history.jsonl", "final", "metrics.jsonl", "plots",
                                                     "report.html", "report.md", "reward_signatures.json"]
    assert len((two / "config_history.jsonl").read_text().splitlines()) == 1  # the main process's start alone
    assert [p.name for p in (two / "checkpoints").iterdir()] == ["step-000003"]

    monkeypatch.setattr(llm_pg.rollout.decoding, "inverse_cdf_sample", lambda probs: probs.argmax(-1))
    train(tiny_config(tiny_model_dir, tiny_data_file, tmp_path / "one", **same, **{"training.prompts_per_step": 4}))
    # The 4-prompt run's rewards also prove that two processes ran: one process alone would score 2 prompts.
    for mine, theirs in zip(read_metrics(two), read_metrics(tmp_path / "one")):  # metrics are over all processes
        keys = ["train/lr", "reward/mean", "completion/length", "loss/policy", "policy/entropy", "policy/grad_norm",
                "advantage/mean"]
        for key in keys + [k for k in ("loss/value", "ppo/clip_frac", "ppo/approx_kl") if k in theirs]:
            assert mine[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), key
    one, both = tensors(tmp_path / "one" / "final"), tensors(two / "final")
    if algorithm == "actor_critic":  # the value head too, saved beside the policy
        one.update(load_file(str(tmp_path / "one" / "final" / "value_head.safetensors")))
        both.update(load_file(str(two / "final" / "value_head.safetensors")))
    assert one.keys() == both.keys()
    # Adam divides by sqrt(v): on a weight whose gradient is almost 0 a rounding difference of the gradient sum
    # becomes a visible step (seen: one of 2048 weights off by 4e-5 at lr 1e-2 when the critic reaches the trunk).
    atol = 1e-4 if algorithm == "actor_critic" else 1e-5
    for name in one:
        torch.testing.assert_close(both[name], one[name], atol=atol, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


# ------------------------------------------------------------------------------------------ security defaults


def test_every_torch_load_is_weights_only():
    found = 0
    for path in sorted(Path(llm_pg.__file__).parent.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names]
                assert "pickle" not in names and "dill" not in names, f"{path.name} imports a pickle loader"
                if isinstance(node, ast.ImportFrom) and node.module == "torch":
                    assert "load" not in names, f"{path.name}: call torch.load by its full name"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                found += 1
                flag = {k.arg: k.value for k in node.keywords}.get("weights_only")
                assert isinstance(flag, ast.Constant) and flag.value is True, f"{path.name}:{node.lineno}"
    assert found >= 3  # optimizer, scheduler and RNG states


def test_remote_code_is_off_by_default():
    assert ModelConfig().trust_remote_code is False
    assert config_from_dict({"model": {"name_or_path": "x"}}).model.trust_remote_code is False


def test_reward_code_is_imported_only_when_a_component_names_it(tiny_model_dir, tiny_data_file, tmp_path,
                                                                monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "side_effect_reward.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('yes')\n\n"
        "def reward(prompts, completions, references):\n    return [0.25] * len(completions)\n")
    monkeypatch.chdir(tmp_path)  # the file is in the working directory and importable by name
    monkeypatch.syspath_prepend(str(tmp_path))
    config = config_from_dict(tiny_config_dict(tiny_model_dir, tiny_data_file, tmp_path / "run"))
    RewardMix.from_config(config.reward)
    assert not marker.exists()

    named = config_from_dict(tiny_config_dict(tiny_model_dir, tiny_data_file, tmp_path / "run", **{
        "reward.components": [{"name": "mine", "function": "side_effect_reward.py:reward"}]}))
    assert not marker.exists()  # validating a config runs no user code
    model = RewardMix.from_config(named.reward)
    assert marker.read_text() == "yes"
    assert model(["p"], ["c"], [["r"]]) == ([0.25], {"mine": [0.25]})


# ------------------------------------------------------------------------------------------------- fuzzing

FUZZ = settings(max_examples=50, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(ModelConfig(name_or_path=str(tiny_model_dir)))


references = st.one_of(st.text(), st.lists(st.text(), max_size=3))  # a string or a list (maybe empty: invalid)


@FUZZ
@given(rows=st.lists(st.fixed_dictionaries({"prompt": st.text(), "reference": references}), min_size=1, max_size=4),
       ensure_ascii=st.booleans())
def test_jsonl_loader_round_trips_any_unicode(rows, ensure_ascii, tokenizer, tmp_path):
    """Arbitrary text (empty, control characters, U+2028, astral planes) loads as written, or is a DataError."""
    path = tmp_path / "fuzz.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=ensure_ascii) + "\n" for r in rows), encoding="utf-8")
    config = DataConfig(source=str(path), use_chat_template=False, split_fractions=[1.0, 0.0, 0.0],
                        max_prompt_tokens=64)
    assert load_records(config, "train") == rows
    if any(r["reference"] == [] for r in rows):  # no reference to score against
        with pytest.raises(DataError, match="data.reference_field"):
            load_examples(config, "train", tokenizer)
        return
    if not any(r["prompt"].strip() for r in rows):  # no prompt at all: nothing to learn
        with pytest.raises(DataError, match="data.prompt_field: every 'prompt'"):
            load_examples(config, "train", tokenizer)
        return
    examples = load_examples(config, "train", tokenizer)
    assert [e.prompt for e in examples] == [r["prompt"] for r in rows]
    assert [e.references for e in examples] == [[r["reference"]] if isinstance(r["reference"], str) else
                                                r["reference"] for r in rows]
    assert all(1 <= len(e.prompt_ids) <= 64 for e in examples)


@pytest.mark.parametrize("name", sorted(REWARDS))
@FUZZ
@given(completion=st.text(), refs=st.lists(st.text(), min_size=1, max_size=3))
def test_builtin_rewards_are_in_0_1_and_equal_the_libraries(name, completion, refs):
    [value] = REWARDS[name](["prompt"], [completion], [refs])
    assert math.isfinite(value) and 0.0 <= value <= 1.0
    if name == "bleu":
        expected = sacrebleu.sentence_bleu(completion, refs).score / 100
    elif name.startswith("chrf"):
        expected = sacrebleu.sentence_chrf(completion, refs, word_order=2 if name == "chrf++" else 0).score / 100
    else:
        scorer = rouge_scorer.RougeScorer([name], use_stemmer=True)
        expected = max(scorer.score(ref, completion)[name].fmeasure for ref in refs)
    assert value == pytest.approx(expected, abs=1e-12)
