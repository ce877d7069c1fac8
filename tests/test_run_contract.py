"""One run-folder contract for every command that writes a run (issue 24): `train`, `demo`, `sft`, `rm`, `rlhf` and
`eval`, from the CLI and from Python. A folder of another kind of run, or inside another run, is refused; a resumed
`rm` is checked like a resumed `train` (settings and the data's content); `eval` never replaces another command's
file; a real full disk and a damaged rm_settings.json are one line. The pipeline's own cases (stages that saw
other inputs, `rlhf --resume` with changed settings) are in tests/test_rlhf.py; docs/reliability.md lists them all.

Every refusal is checked the same way: exit code 2, exactly one error line naming the field and the fix, and the
sha256 of every file of the folder unchanged. The refusals of a folder are real processes (`python -m llm_pg`, as a
user runs it); the cases whose answer comes after the model code is loaded (a resumed rm's settings, a damaged
rm_settings.json, eval's outputs) call `llm_pg.cli.main` in-process, the same code from argv to exit code, to spare
~4 s of imports per call.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from helpers import (CAN_LEARN, assert_one_line_error, cli_main, pipeline_values, run_cli,
                     tiny_config, write_config_yaml, write_tiny_pairs)
from llm_pg.runs.checkpoint import checkpoint_dir, latest_checkpoint
from llm_pg.runs.folder import LOCK_FILE, MARKER
from test_run_folder import snapshot, steps

TRAIN = {"training.max_steps": 2, "training.save_every": 1, "training.keep_checkpoints": 5, **CAN_LEARN}


def rm_values(tmp, model_dir, output_dir, pairs=None, **rm) -> dict:
    """A 2-step reward model with a constant schedule and a checkpoint every step (max_steps may grow on resume)."""
    return {"model": {"name_or_path": str(model_dir)}, "training": {"num_threads": 1, "seed": 0},
            "rm": {"source": str(pairs or write_tiny_pairs(tmp / "pairs")), "batch_size": 4, "max_steps": 2,
                   "learning_rate": 3e-3, "lr_scheduler": "constant", "save_every": 1, "keep_checkpoints": 5,
                   "eval_split": "", "use_chat_template": False, "output_dir": str(output_dir), **rm}}


def write_yaml(path, values) -> str:
    path.write_text(yaml.safe_dump(values))
    return str(path)


@pytest.fixture(scope="module")
def finished(tiny_model_dir, tiny_data_file, tmp_path_factory):
    """A finished 2-step `llm-pg train` run and a finished 2-step `llm-pg rm` run, made through the CLI."""
    tmp = tmp_path_factory.mktemp("finished")
    train = run_cli("train", "--config", write_config_yaml(tmp / "train.yaml", tiny_model_dir, tiny_data_file,
                                                           tmp / "train", **TRAIN), cwd=tmp)
    assert train.returncode == 0, train.stderr[-3000:]
    rm = run_cli("rm", "--config", write_yaml(tmp / "rm.yaml", rm_values(tmp, tiny_model_dir, tmp / "rm")), cwd=tmp)
    assert rm.returncode == 0, rm.stderr[-3000:]
    return tmp


@pytest.fixture
def runs(finished, tmp_path):
    """Copies of the finished runs in tmp_path (train/, rm/) and the pairs the rm run trained on (pairs/)."""
    for name in ("train", "rm", "pairs"):
        shutil.copytree(finished / name, tmp_path / name)
    return tmp_path


def test_every_run_folder_says_which_command_wrote_it(runs):
    for name, kind in (("train", "train"), ("rm", "rm")):
        marker = json.loads((runs / name / MARKER).read_text())
        assert marker["kind"] == kind and marker["command"] == kind and marker["created"]
        assert not (runs / name / LOCK_FILE).exists()  # released at the end


# ------------------------------------------------------------------------------------ another kind, another run

def _argv(case: str, runs, model_dir, data_file) -> list:
    """The command line of each hostile case: a command pointed at a folder that holds another kind of run."""
    train_yaml = write_config_yaml(runs / "t.yaml", model_dir, data_file, runs / "train", **TRAIN)
    rm_into = lambda folder: write_yaml(runs / "r.yaml", rm_values(runs, model_dir, folder, runs / "pairs"))  # noqa
    pipeline = pipeline_values(runs, runs / "pairs", runs / "train", model=model_dir)
    return {
        "rlhf into a finished train run": ["rlhf", "--config", write_yaml(runs / "p.yaml", pipeline)],
        "rlhf --resume into a finished train run": ["rlhf", "--resume", "--config", write_yaml(runs / "p.yaml",
                                                                                               pipeline)],
        "rm into a train run": ["rm", "--config", rm_into(runs / "train")],
        "rm --resume into a train run": ["rm", "--resume", "--config", rm_into(runs / "train")],
        "train into an rm run": ["train", "--config", train_yaml, f"training.output_dir={runs / 'rm'}"],
        "train --resume into an rm run": ["train", "--resume", "--config", train_yaml,
                                          f"training.output_dir={runs / 'rm'}"],
        "sft into an rm run": ["sft", "--config", train_yaml, f"sft.output_dir={runs / 'rm'}"],
        "demo into an rm run": ["demo", f"training.output_dir={runs / 'rm'}"],
    }[case]


KIND_CASES = {"rlhf into a finished train run": ("rlhf.output_dir", "train", "an `llm-pg rlhf` pipeline"),
              "rlhf --resume into a finished train run": ("rlhf.output_dir", "train", "an `llm-pg rlhf` pipeline"),
              "rm into a train run": ("rm.output_dir", "train", "an `llm-pg rm` reward-model run"),
              "rm --resume into a train run": ("rm.output_dir", "train", "an `llm-pg rm` reward-model run"),
              "train into an rm run": ("training.output_dir", "rm", "an `llm-pg train` run"),
              "train --resume into an rm run": ("training.output_dir", "rm", "an `llm-pg train` run"),
              "sft into an rm run": ("sft.output_dir", "rm", "an `llm-pg sft` model"),
              "demo into an rm run": ("training.output_dir", "rm", "an `llm-pg train` run")}


@pytest.mark.parametrize("case", list(KIND_CASES))
def test_a_folder_of_another_kind_of_run_is_refused(case, runs, tiny_model_dir, tiny_data_file):
    field, held, wanted = KIND_CASES[case]
    folder = runs / held
    before = snapshot(folder)
    result = run_cli(*_argv(case, runs, tiny_model_dir, tiny_data_file), cwd=runs)
    assert result.returncode == 2, result.stderr[-3000:]
    held_text = "an `llm-pg train` run" if held == "train" else "an `llm-pg rm` reward-model run"
    assert_one_line_error(result.stderr, f"{field}: {folder} holds {held_text}", f"not {wanted}",
                          f"choose another {field}", "--overwrite")
    assert snapshot(folder) == before  # nothing written, nothing lost (the config.yaml and report.md included)


@pytest.mark.parametrize("where", ["final", "checkpoints/step-000001", "new/sub"])
def test_a_folder_inside_another_run_is_refused(where, runs, tiny_model_dir, tiny_data_file):
    """Inside a run's folder only the run itself writes (its own sub-runs: a warm start's sft/, the pipeline's
    stages), so a run into train/final (beside the policy files) or anywhere below it is refused."""
    before = snapshot(runs / "train")
    config = write_yaml(runs / "r.yaml", rm_values(runs, tiny_model_dir, runs / "train" / where, runs / "pairs"))
    result = run_cli("rm", "--config", config, cwd=runs)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, f"rm.output_dir: {runs / 'train' / where} lies inside an `llm-pg train` run "
                                         f"in {runs / 'train'}", "choose a rm.output_dir outside it")
    assert snapshot(runs / "train") == before


def test_overwrite_deletes_a_run_of_another_kind_and_marks_the_folder(runs, tiny_model_dir, tiny_data_file):
    config = write_config_yaml(runs / "t.yaml", tiny_model_dir, tiny_data_file, runs / "rm",
                               **{"training.max_steps": 1, **CAN_LEARN})
    result = run_cli("train", "--overwrite", "--config", config, cwd=runs)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (runs / "rm" / "rm_metrics.jsonl").exists() and steps(runs / "rm") == [1]
    assert json.loads((runs / "rm" / MARKER).read_text())["kind"] == "train"


# -------------------------------------------------------------------------------------------- rm --resume

def test_rm_resume_refuses_changed_settings_and_data_and_applies_safe_changes(runs, tiny_model_dir, capsys,
                                                                              caplog):
    folder = runs / "rm2"  # its own run: a copied run's config names the pairs where the original run read them
    values = rm_values(runs, tiny_model_dir, folder, runs / "pairs")
    assert cli_main("rm", "--config", write_yaml(runs / "r.yaml", values)) == 0
    capsys.readouterr()  # the run's progress bars
    before = snapshot(folder)
    values["rm"]["max_steps"] = 3
    other_pairs = write_tiny_pairs(runs / "other_pairs", n_train=40)
    cases = {("rm.learning_rate (0.003 -> 0.01)",): {"rm": {"learning_rate": 1e-2}},
             ("rm.source ('...", "/pairs' -> '...", "/other_pairs')"): {"rm": {"source": str(other_pairs)}},
             ("rm.base ('...", "/train/final')"): {"rm": {"base_model": str(runs / "train" / "final")}},
             # like train, rm continues in the precision it ran in (training/setup.py)
             ("training.mixed_precision ('auto' -> 'bf16')",): {"training": {"mixed_precision": "bf16"}}}
    for needles, change in cases.items():
        changed = {**values, **{section: {**values[section], **keys} for section, keys in change.items()}}
        assert cli_main("rm", "--resume", "--config", write_yaml(runs / "r.yaml", changed)) == 2
        assert_one_line_error(capsys.readouterr().err, "--resume: these settings differ from the run in", *needles,
                              "or start a new run with --overwrite or another rm.output_dir")
        assert snapshot(folder) == before

    # the same path, other pairs: the checkpoint's data position indexes the old pairs
    original = (runs / "pairs" / "train.jsonl").read_text()
    (runs / "pairs" / "train.jsonl").write_text((other_pairs / "train.jsonl").read_text())
    assert cli_main("rm", "--resume", "--config", write_yaml(runs / "r.yaml", values)) == 2
    assert_one_line_error(capsys.readouterr().err, "--resume: these settings differ", "rm.source content (", "sha256")
    assert snapshot(folder) == before

    (runs / "pairs" / "train.jsonl").write_text(original)
    safe = {**values, "rm": {**values["rm"], "keep_checkpoints": 3, "eval_batch_size": 8}}  # max_steps 2 -> 3
    caplog.set_level("INFO")
    assert cli_main("rm", "--resume", "--config", write_yaml(runs / "r.yaml", safe)) == 0
    assert "--resume: rm.max_steps changed from 2 to 3" in caplog.text
    assert [json.loads(line)["step"] for line in (folder / "rm_metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    history = [json.loads(line) for line in (folder / "config_history.jsonl").read_text().splitlines()]
    assert [h["start_step"] for h in history] == [0, 2]
    assert history[1]["changed"] == {"rm.max_steps": [2, 3], "rm.keep_checkpoints": [5, 3],
                                     "rm.eval_batch_size": [32, 8]}
    assert history[0]["inputs"] == history[1]["inputs"] and len(history[0]["inputs"]["rm.source"]) == 64


def test_rm_resume_repairs_a_torn_log_and_skips_a_damaged_checkpoint(runs, finished):
    """The same guarantees as `train --resume` (tests/test_run_folder.py), for a reward model."""
    folder = runs / "rm"
    values = yaml.safe_load((finished / "rm.yaml").read_text())  # the run's own config: its own pairs
    values["rm"].update(output_dir=str(folder), max_steps=3)
    newest = checkpoint_dir(folder, 2) / "model" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:1000])  # a save cut off by a power loss, renamed into place
    with open(folder / "rm_metrics.jsonl", "a") as log:
        log.write('{"step": 3, "rm/lo')  # a line cut off by a kill
    result = run_cli("rm", "--resume", "--config", write_yaml(runs / "r.yaml", values), cwd=runs)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"checkpoint {checkpoint_dir(folder, 2)} is incomplete or damaged; skipping it" in result.stderr
    assert f"resumed from {checkpoint_dir(folder, 1)} at step 1" in result.stderr
    assert "dropped 1 damaged line(s)" in result.stderr
    assert [json.loads(line)["step"] for line in (folder / "rm_metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


@pytest.mark.parametrize("command", ["rm", "rlhf"])
def test_rm_and_rlhf_refuse_a_folder_another_live_run_holds(command, runs, tiny_model_dir):
    """A live process (this test's) holds the folder's lock: `rm --resume` into the finished rm run, and `rlhf` into
    a new pipeline folder, stop in one line before loading anything, and change no file."""
    folder = runs / "rm" if command == "rm" else runs / "pipeline"
    folder.mkdir(exist_ok=True)
    lock = {"pid": os.getpid(), "host": os.uname().nodename, "started": "2026-01-01T00:00:00Z", "command": command}
    (folder / LOCK_FILE).write_text(json.dumps(lock))
    before = snapshot(folder)
    if command == "rm":
        argv = ["rm", "--resume", "--config", write_yaml(runs / "r.yaml", rm_values(runs, tiny_model_dir, folder,
                                                                                    runs / "pairs"))]
    else:
        argv = ["rlhf", "--config", write_yaml(runs / "p.yaml", pipeline_values(runs, runs / "pairs", folder,
                                                                                 model=tiny_model_dir))]
    result = run_cli(*argv, cwd=runs)
    assert result.returncode == 2
    field = "rm.output_dir" if command == "rm" else "rlhf.output_dir"
    assert_one_line_error(result.stderr, field, f"is in use by another run (pid {os.getpid()}")
    assert snapshot(folder) == before


# ------------------------------------------------------------------------------------------------ the library

def test_the_library_holds_the_folder_as_the_cli_does(runs, tiny_model_dir, tiny_data_file):
    """llm_pg.train, train_sft, train_reward_model and run_pipeline refuse, lock and check a resume like their
    commands; overwrite=True and resume=True are the flags."""
    from llm_pg import run_pipeline, train, train_reward_model
    from llm_pg.config.schema import config_from_dict
    from llm_pg.config.resume import ResumeConfigError
    from llm_pg.runs.folder import RunFolderError
    from llm_pg.training.sft import train_sft

    folder = runs / "train"
    before = snapshot(folder)
    config = tiny_config(tiny_model_dir, tiny_data_file, folder, **TRAIN)
    with pytest.raises(RunFolderError, match=r"training.output_dir: .* already holds a run .*--overwrite"):
        train(config)
    changed = tiny_config(tiny_model_dir, tiny_data_file, folder, **TRAIN, **{"training.learning_rate": 0.5,
                                                                             "kl.coef": 0.2})
    with pytest.raises(ResumeConfigError, match=r"kl.coef \(0.0 -> 0.2\), training.learning_rate \(0.01 -> 0.5\)"):
        train(changed, resume=True)
    with pytest.raises(RunFolderError, match=r"holds an `llm-pg train` run .* not an `llm-pg rm` reward-model run"):
        train_reward_model(config_from_dict(rm_values(runs, tiny_model_dir, folder, runs / "pairs")))
    with pytest.raises(RunFolderError, match=r"holds an `llm-pg train` run .* not an `llm-pg sft` model"):
        train_sft(config, folder)
    with pytest.raises(RunFolderError, match=r"holds an `llm-pg train` run .* not an `llm-pg rlhf` pipeline"):
        run_pipeline(config_from_dict(pipeline_values(runs, runs / "pairs", folder, model=tiny_model_dir)))
    assert snapshot(folder) == before

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:  # a live process of this host holds the lock
        (folder / LOCK_FILE).write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename,
                                                    "started": "2026-01-01T00:00:00Z", "command": "train"}))
        with pytest.raises(RunFolderError, match=rf"is in use by another run \(pid {sleeper.pid}"):
            train(config, resume=True)
    finally:
        sleeper.kill()
        sleeper.wait()
    (folder / LOCK_FILE).unlink()
    assert snapshot(folder) == before

    result = train(tiny_config(tiny_model_dir, tiny_data_file, folder, **{"training.max_steps": 1}, **CAN_LEARN),
                   overwrite=True)
    assert result["final_step"] == 1 and steps(folder) == [1]
    assert not (folder / LOCK_FILE).exists()


# --------------------------------------------------------------------------------------------- a full disk

@pytest.fixture
def small_disk(tmp_path):
    """A real tmpfs at tmp_path/disk, unmounted afterwards; skipped where mounting is not permitted (not root, a
    container without CAP_SYS_ADMIN)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = []

    def mount(size_kib: int):
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(disk)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})")
        mounted.append(disk)
        return disk

    yield mount
    for path in mounted:
        subprocess.run(["umount", str(path)], check=True)


def test_a_real_full_disk_in_torch_save_is_one_line(finished, small_disk, tiny_model_dir, tiny_data_file, tmp_path):
    """The 2-step run copied onto a tmpfs with room for step 3's model (140 KiB) but not its optimizer state
    (236 KiB): torch.save's zip writer fails with `RuntimeError: ... unexpected pos N vs M` and no errno."""
    pages = sum(-(-p.stat().st_size // 4096) for p in (finished / "train").rglob("*") if p.is_file())
    disk = small_disk(4 * pages + 240)  # KiB: the run, and 240 KiB free
    shutil.copytree(finished / "train", disk / "run")
    before = snapshot(disk / "run" / "checkpoints")
    config = write_config_yaml(tmp_path / "c.yaml", tiny_model_dir, tiny_data_file, disk / "run", **TRAIN)
    result = run_cli("train", "--config", config, "--resume", "training.max_steps=3", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert_one_line_error(result.stderr, f"training.output_dir: writing {disk / 'run' / 'checkpoints' / '.tmp-step-'}",
                          "failed (no space left on the device; 0 MiB free there); free some space", "--resume")
    [half_written] = (disk / "run" / "checkpoints").glob(".tmp-step-000003-*")
    assert (half_written / "model" / "model.safetensors").stat().st_size > 100_000  # the model fitted,
    assert (half_written / "optimizer.pt").is_file() and not (half_written / "rng.pt").exists()  # torch.save did not
    assert latest_checkpoint(disk / "run") == checkpoint_dir(disk / "run", 2)
    after = snapshot(disk / "run" / "checkpoints")
    assert {k: v for k, v in after.items() if not k.startswith(".tmp-")} == before  # the old checkpoints intact


def test_torchs_zip_writer_error_is_a_write_failure(tmp_path, monkeypatch):
    """Where no tmpfs can be mounted: the exact error torch raised on a full tmpfs (the test above)."""
    import torch

    from llm_pg.runs.checkpoint import CheckpointWriteError, explain_write_errors

    def short_write(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 129600 vs 129488")

    monkeypatch.setattr(torch, "save", short_write)
    with pytest.raises(CheckpointWriteError, match=r"training.output_dir: writing .*\.tmp-x failed \(\[enforce fail at "
                                                   r"inline_container.cc:672\] . unexpected pos 129600 vs 129488; "
                                                   r"\d+ MiB free there\); free some space"):
        with explain_write_errors(tmp_path / ".tmp-x"):
            torch.save({}, tmp_path / ".tmp-x" / "a.pt")


# ---------------------------------------------------------------------------------- saved state that is damaged

@pytest.mark.parametrize("damage, problem", [
    ("not json {", "not valid JSON"), ("[1, 2]", "a JSON list, not an object"),
    ('{"rendering": {"use_chat_template": false, "system_prompt": null}, "max_length": 64}',
     "'normalization' must hold finite numbers"),
    ('{"rendering": "chat", "max_length": 64, "normalization": {"mean": 0, "std": 1}}', "'rendering' must be"),
], ids=["garbage", "a list", "no normalization", "rendering a string"])
def test_a_damaged_rm_settings_json_is_one_line(damage, problem, runs, tiny_model_dir, tiny_data_file, capsys):
    (runs / "rm" / "final" / "rm_settings.json").write_text(damage)
    component = {"name": "rm", "type": "reward_model", "model": str(runs / "rm" / "final")}
    config = write_config_yaml(runs / "t.yaml", tiny_model_dir, tiny_data_file, runs / "new",
                               **{"reward.components": [component], "training.max_steps": 1})
    assert cli_main("train", "--config", config) == 2
    error = capsys.readouterr().err
    assert_one_line_error(error, f"reward.components[0].model: {runs / 'rm' / 'final' / 'rm_settings.json'} "
                                 f"is damaged ({problem}", "train the reward model again with `llm-pg rm`")
    assert not (runs / "new").exists()  # a run that failed before writing its files leaves no folder


# ------------------------------------------------------------------------------------------------------ eval

def test_eval_never_replaces_another_commands_file_and_an_earlier_eval_only_with_overwrite(runs, tiny_model_dir,
                                                                                           tiny_data_file, capsys):
    train_yaml = write_config_yaml(runs / "t.yaml", tiny_model_dir, tiny_data_file, runs / "train", **TRAIN)
    before = snapshot(runs / "train")
    evaluate = ["eval", "--model", runs / "train" / "final", "--config", train_yaml, "data.max_eval_samples=2"]
    for output, clobbered in (("metrics.json", "metrics.jsonl"), ("config.yaml", "config.yaml"),
                              ("report.md", "report.md")):
        assert cli_main(*evaluate, "--output", runs / "train" / output, "--overwrite") == 2
        error = capsys.readouterr().err
        assert_one_line_error(error, f"eval --output: {runs / 'train' / clobbered} exists and was not written "
                                     f"by `llm-pg eval` (it belongs to an `llm-pg train` run in "
                                     f"{runs / 'train'}); choose another eval --output")
        assert snapshot(runs / "train") == before

    assert cli_main(*evaluate, "--output", runs / "train" / "eval_test.json") == 0  # a new file: allowed
    capsys.readouterr()  # its progress bars
    written = snapshot(runs / "train")
    assert cli_main(*evaluate, "--output", runs / "train" / "eval_test.json") == 2
    assert_one_line_error(capsys.readouterr().err, f"{runs / 'train' / 'eval_test.json'} holds an earlier "
                                                   "`llm-pg eval` output; use --overwrite to replace it")
    assert snapshot(runs / "train") == written
    assert cli_main(*evaluate, "--output", runs / "train" / "eval_test.json", "--overwrite") == 0
    assert json.loads((runs / "train" / "eval_test.json").read_text())["settings"]["command"] == "eval"
