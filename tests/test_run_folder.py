"""The run folder (issue 13, part A): never silently overwritten, mixed or resumed with the wrong state.

Every case runs the CLI and checks the exit code, the one error line (naming the field or file and the fix) and
that nothing in the folder was lost. A case runs as a user does (a subprocess) where the process is part of what is
tested (a live or killed run, a file-size limit, a refusal before the model code loads, the first refusal of each
kind); the others (a resume's settings, a torn log, a damaged report) call llm_pg.cli.main in-process
(helpers.cli_main: the same code from argv to exit code, without ~4 s of imports per call).
docs/reliability.md lists each guarantee.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from helpers import assert_one_line_error, cli_command, cli_env, cli_main, run_cli, write_config_yaml
from llm_pg.runs.checkpoint import checkpoint_dir, latest_checkpoint
from llm_pg.runs.folder import LOCK_FILE

RUN = {"training.max_steps": 2, "training.save_every": 1, "training.keep_checkpoints": 5}


def steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under the folder: 'nothing was lost or changed' is snapshot(before) == snapshot(after)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def two_steps(tiny_model_dir, tiny_data_file, tmp_path_factory):
    """A finished 2-step CLI run with checkpoints step-1 and step-2, and its config file."""
    tmp = tmp_path_factory.mktemp("two_steps")
    config = write_config_yaml(tmp / "c.yaml", tiny_model_dir, tiny_data_file, tmp / "run", **RUN)
    result = run_cli("train", "--config", config, cwd=tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "run"


@pytest.fixture
def run(two_steps, tmp_path, tiny_model_dir, tiny_data_file) -> tuple[Path, Path]:
    """A copy of the 2-step run in tmp_path/run, and a config file that names it."""
    shutil.copytree(two_steps, tmp_path / "run")
    return tmp_path / "run", write_config_yaml(tmp_path / "c.yaml", tiny_model_dir, tiny_data_file,
                                               tmp_path / "run", **RUN)


def test_training_again_into_a_run_is_refused_and_overwrite_starts_afresh(run, tmp_path):
    run_dir, config = run
    before = snapshot(run_dir)
    again = run_cli("train", "--config", config, cwd=tmp_path)
    assert again.returncode == 2
    assert_one_line_error(again.stderr, "training.output_dir", "already holds a run", "--resume", "--overwrite")
    assert snapshot(run_dir) == before  # nothing written, nothing lost

    fresh = run_cli("train", "--config", config, "--overwrite", "training.max_steps=1",
                    "algorithm.entropy_coef=0.01", cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert steps(run_dir) == [1]
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-000001"]  # the old step-2 is gone
    assert len((run_dir / "config_history.jsonl").read_text().splitlines()) == 1  # the old run's history too


def test_a_second_run_into_a_busy_folder_is_refused_and_a_stale_lock_is_taken_over(run, tmp_path, tiny_model_dir,
                                                                                    tiny_data_file):
    run_dir, config = run
    long = write_config_yaml(tmp_path / "long.yaml", tiny_model_dir, tiny_data_file, tmp_path / "busy",
                             **{"training.max_steps": 500, "training.save_every": 1})
    first = subprocess.Popen(cli_command("train", "--config", long), cwd=tmp_path, env=cli_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while latest_checkpoint(tmp_path / "busy") is None:  # the first run is training
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        second = run_cli("train", "--config", long, "--resume", cwd=tmp_path)
        assert second.returncode == 2
        assert_one_line_error(second.stderr, "training.output_dir", "in use by another run", f"pid {first.pid}",
                              "choose another training.output_dir")
    finally:
        first.send_signal(signal.SIGKILL)  # as if the machine died: the lock stays behind
        first.wait(60)
    lock = json.loads((tmp_path / "busy" / LOCK_FILE).read_text())
    assert lock["pid"] == first.pid and lock["command"] == "train" and lock["host"] and lock["started"]
    reached = int(latest_checkpoint(tmp_path / "busy").name.split("-")[1])

    resumed = run_cli("train", "--config", long, "--resume", f"training.max_steps={reached + 1}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"taking over the stale lock {tmp_path / 'busy' / LOCK_FILE}" in resumed.stderr
    assert steps(tmp_path / "busy") == list(range(1, reached + 2))  # every step once
    assert not (tmp_path / "busy" / LOCK_FILE).exists()  # released at the end


@pytest.mark.parametrize("command", ["sft", "eval"])
def test_sft_and_eval_outputs_are_locked_too(command, run, tmp_path):
    """A live process (this test's) holds the lock: the CLI refuses before loading anything."""
    run_dir, config = run
    out = tmp_path / "out"
    out.mkdir()
    lock = {"pid": os.getpid(), "host": os.uname().nodename, "started": "2026-01-01T00:00:00Z", "command": command}
    if command == "sft":
        (out / LOCK_FILE).write_text(json.dumps(lock))
        argv = ["sft", "--config", config, f"sft.output_dir={out}", "sft.max_steps=1"]
    else:
        (out / "eval.json.lock").write_text(json.dumps(lock))
        argv = ["eval", "--model", run_dir / "final", "--config", config, "--output", out / "eval.json"]
    result = run_cli(*argv, cwd=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "in use by another run", f"pid {os.getpid()}")
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE if command == "sft" else "eval.json.lock"]


def test_resume_refuses_a_changed_run_and_applies_safe_changes(run, tmp_path, tiny_data_file, capsys, caplog):
    run_dir, config = run
    before = snapshot(run_dir)
    assert cli_main("train", "--config", config, "--resume", "training.learning_rate=0.5",
                    f"model.name_or_path={tmp_path}", "generation.num_samples=4", "training.max_steps=3") == 2
    changed = capsys.readouterr().err
    assert_one_line_error(changed, "--resume", "training.learning_rate (0.01 -> 0.5)", "model.name_or_path",
                          "generation.num_samples (2 -> 4)", "config.yaml", "--overwrite")
    assert "training.max_steps" not in changed.splitlines()[-1]  # a safe change is not named
    assert snapshot(run_dir) == before  # config.yaml still describes what ran

    caplog.set_level("INFO")
    assert cli_main("train", "--config", config, "--resume", "training.max_steps=4", "training.log_every=2") == 0
    assert "--resume: training.max_steps changed from 2 to 4" in caplog.text
    assert steps(run_dir) == [1, 2, 4]  # steps 3 and 4 ran, logged every 2nd step: the new cadence applies
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())["training"]
    assert (saved["max_steps"], saved["log_every"]) == (4, 2)
    history = [json.loads(line) for line in (run_dir / "config_history.jsonl").read_text().splitlines()]
    assert [(h["start_step"], h["config"]["training"]["max_steps"]) for h in history] == [(0, 2), (2, 4)]


def test_a_torn_metrics_line_is_repaired_on_resume_and_in_the_report(run, tmp_path, caplog):
    run_dir, config = run
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "reward/mean": 0.2')  # a write cut off by a kill
    assert cli_main("report", run_dir) == 0
    assert "dropped 1 damaged line" in caplog.text and (run_dir / "report.md").is_file()

    (checkpoint_dir(run_dir, 2).parent / ".tmp-step-000003-99999").mkdir()  # a save killed half-way
    (run_dir / ".tmp-final-99999").mkdir()
    caplog.clear()  # the resumed run's messages only
    assert cli_main("train", "--config", config, "--resume", "training.max_steps=3") == 0
    assert steps(run_dir) == [1, 2, 3]  # every step exactly once
    assert "deleted 2 temporary file(s)" in caplog.text
    assert not list(run_dir.glob(".tmp-*")) and not list((run_dir / "checkpoints").glob(".tmp-*"))


@pytest.mark.parametrize("damage", ["config.yaml", "metrics.jsonl"])
def test_report_on_a_damaged_run_is_one_line(damage, run, tmp_path, capsys):
    run_dir, _ = run
    if damage == "config.yaml":
        (run_dir / "config.yaml").write_text("training: [unclosed\n")
    else:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        (run_dir / "metrics.jsonl").write_text("\n".join(["garbage{", *lines]) + "\n")
    assert cli_main("report", run_dir) == 2
    assert_one_line_error(capsys.readouterr().err, f"report: {run_dir / damage} is damaged")


DAMAGE = {"truncated model.safetensors": "model/model.safetensors", "truncated optimizer.pt": "optimizer.pt",
          "trainer_state {}": "trainer_state.json", "one flipped byte in rng.pt": "rng.pt"}


def damage_file(folder: Path, damage: str) -> None:
    path = folder / DAMAGE[damage]
    data = path.read_bytes()
    if damage.startswith("truncated"):
        path.write_bytes(data[:len(data) // 2])
    elif damage == "trainer_state {}":
        path.write_text("{}")
    else:
        path.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_every_kind_of_damage_is_noticed(damage, run, caplog):
    """In-process (fast) for each kind; the CLI's fallback is the next test."""
    run_dir, _ = run
    damage_file(checkpoint_dir(run_dir, 2), damage)
    assert latest_checkpoint(run_dir) == checkpoint_dir(run_dir, 1)
    assert f"checkpoint {checkpoint_dir(run_dir, 2)} is incomplete or damaged; skipping it" in caplog.text


def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_intact(run, tmp_path):
    run_dir, config = run
    newest = checkpoint_dir(run_dir, 2)
    damage_file(newest, "truncated model.safetensors")
    resumed = run_cli("train", "--config", config, "--resume", "training.max_steps=3", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"checkpoint {newest} is incomplete or damaged; skipping it" in resumed.stderr
    assert f"resumed from {checkpoint_dir(run_dir, 1)} at step 1" in resumed.stderr
    assert steps(run_dir) == [1, 2, 3]


def test_a_full_disk_is_one_line_naming_the_folder_and_free_space(run, tmp_path):
    """A file-size limit makes every write past 60 kB fail, as a full disk does (the model file is 110 kB)."""
    run_dir, config = run

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))

    result = subprocess.run(cli_command("train", "--config", config, "--resume", "training.max_steps=3"),
                            cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300,
                            preexec_fn=limit_file_size)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, f"writing {run_dir / 'checkpoints' / '.tmp-step-000003'}", "MiB free",
                          "free some space", "--resume")
    assert latest_checkpoint(run_dir) == checkpoint_dir(run_dir, 2)  # the last good state is intact
    assert steps(run_dir) == [1, 2, 3]


@pytest.mark.parametrize("command", ["train", "sft", "eval"])
def test_an_output_folder_that_is_a_file_is_refused_before_loading(command, run, tmp_path):
    run_dir, config = run
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    argv = {"train": ["train", "--config", config, f"training.output_dir={blocker}"],
            "sft": ["sft", "--config", config, f"sft.output_dir={blocker / 'sub'}"],
            "eval": ["eval", "--model", run_dir / "final", "--config", config, "--output", blocker / "eval.json"]}
    result = run_cli(*argv[command], cwd=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, str(blocker), "a file", "choose another")
    assert blocker.read_text() == "not a folder"


# ------------------------------------------------------------------ what a subprocess cannot set up here (root)


def test_a_read_only_output_folder_is_one_line_before_loading(tmp_path, monkeypatch, capsys, tiny_model_dir,
                                                              tiny_data_file):
    """Tests run as root, which writes through any permission: the file system's EROFS is simulated."""
    import errno
    import pathlib

    from llm_pg.cli import main

    config = write_config_yaml(tmp_path / "c.yaml", tiny_model_dir, tiny_data_file, tmp_path / "ro" / "run")
    (tmp_path / "ro").mkdir()
    real = pathlib.Path.write_bytes

    def read_only(self, data):
        if self.parent == tmp_path / "ro":
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", read_only)
    for argv in (["train", "--config", str(config)],
                 ["sft", "--config", str(config), f"sft.output_dir={tmp_path / 'ro'}"],
                 ["eval", "--model", str(tiny_model_dir), "--config", str(config), "--output",
                  str(tmp_path / "ro" / "e.json")]):
        assert main(argv) == 2
        assert_one_line_error(capsys.readouterr().err, f"cannot write to {tmp_path / 'ro'} (Read-only file system)",
                              "choose a writable")
    assert list((tmp_path / "ro").iterdir()) == []


def test_a_full_disk_names_the_space(tmp_path, monkeypatch):
    """ENOSPC itself (the subprocess test above hits a file-size limit, EFBIG): 'no space left' and the free space."""
    import errno

    import torch

    from llm_pg.runs.checkpoint import CheckpointWriteError, explain_write_errors

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointWriteError, match=r"writing .*\.tmp-x failed \(no space left on the device; \d+ MiB "
                                                   r"free there\); free some space"):
        with explain_write_errors(tmp_path / ".tmp-x"):
            torch.save({}, tmp_path / ".tmp-x" / "a.pt")


def test_resume_and_overwrite_together_are_refused(tmp_path, capsys, tiny_model_dir, tiny_data_file):
    from llm_pg.cli import main

    config = write_config_yaml(tmp_path / "c.yaml", tiny_model_dir, tiny_data_file, tmp_path / "run")
    assert main(["train", "--config", str(config), "--resume", "--overwrite"]) == 2
    assert_one_line_error(capsys.readouterr().err, "--resume", "--overwrite", "give one of them")


def test_sft_into_an_existing_model_is_refused_and_overwrite_clears_it(run, tmp_path, capsys):
    """In-process: the same open_run_folder as train (whose real process is tested above); sft has no --resume."""
    from llm_pg.cli import main

    run_dir, config = run
    before = snapshot(run_dir)
    assert main(["sft", "--config", str(config), f"sft.output_dir={run_dir}"]) == 2
    error = capsys.readouterr().err
    assert_one_line_error(error, "sft.output_dir", "holds an `llm-pg train` run", "not an `llm-pg sft` model",
                          "--overwrite")
    assert "--resume" not in error and snapshot(run_dir) == before
    assert main(["sft", "--overwrite", "--config", str(config), f"sft.output_dir={run_dir}", "sft.max_steps=1"]) == 0
    assert sorted(p.name for p in run_dir.iterdir()) == [".llm_pg_run.json", "config.yaml", "final",
                                                         "sft_metrics.jsonl"]
    assert main(["sft", "--config", str(config), f"sft.output_dir={run_dir}", "sft.max_steps=1"]) == 2
    assert_one_line_error(capsys.readouterr().err, "sft.output_dir", "already holds a run", "--overwrite")
