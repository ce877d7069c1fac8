"""--overwrite deletes only an llm-pg run, and only once the new run has ended: a new run that is refused, fails or
is stopped before saving anything puts the previous run back as it was (llm_pg/runs/folder.py)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from helpers import assert_one_line_error, cli_main, write_config_yaml, write_tiny_data
from llm_pg.errors import LlmPgError
from llm_pg.runs import overwrite
from llm_pg.runs.folder import LOCK_FILE, RunFolderError, open_run_folder
from llm_pg.runs.overwrite import COMPLETE, DELETING, PREVIOUS
from llm_pg.runs.marker import write_marker


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under the folder, and every folder's name (an empty one counts too)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def old_run(folder: Path) -> Path:
    """A finished train run's files: marker, config, log, a checkpoint, a final policy."""
    folder.mkdir(parents=True)
    write_marker(folder, "train", "train")
    (folder / "config.yaml").write_text("old: run\n")
    (folder / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    (folder / "checkpoints" / "step-000002").mkdir(parents=True)
    (folder / "checkpoints" / "step-000002" / "model.safetensors").write_bytes(b"old weights")
    (folder / "final").mkdir()
    (folder / "final" / "model.safetensors").write_bytes(b"old final")
    return folder


def test_a_new_run_that_fails_before_saving_puts_the_previous_run_back(tmp_path):
    folder = old_run(tmp_path / "run")
    before = snapshot(folder)
    with pytest.raises(RuntimeError, match="model failed to load"):
        with open_run_folder(folder, "training.output_dir", "train", overwrite=True):
            assert not (folder / "metrics.jsonl").exists() and (folder / PREVIOUS / "metrics.jsonl").exists()
            (folder / "config.yaml").write_text("new: run\n")  # what a new run writes first
            (folder / "config_history.jsonl").write_text("{}\n")
            raise RuntimeError("model failed to load")
    assert snapshot(folder) == before  # the same files, byte for byte; the new run's and PREVIOUS are gone


def test_a_stopped_run_before_saving_puts_it_back_and_one_that_saved_keeps_its_own(tmp_path):
    folder = old_run(tmp_path / "run")
    before = snapshot(folder)
    with pytest.raises(KeyboardInterrupt):
        with open_run_folder(folder, "training.output_dir", "train", overwrite=True):
            raise KeyboardInterrupt
    assert snapshot(folder) == before

    with pytest.raises(KeyboardInterrupt):
        with open_run_folder(folder, "training.output_dir", "train", overwrite=True):
            (folder / "metrics.jsonl").write_text('{"step": 1}\n')
            (folder / "checkpoints" / "step-000001").mkdir(parents=True)  # the new run saved: --resume continues it
            raise KeyboardInterrupt
    assert sorted(p.name for p in folder.iterdir()) == [".llm_pg_run.json", "checkpoints", "metrics.jsonl"]
    assert [p.name for p in (folder / "checkpoints").iterdir()] == ["step-000001"]


def test_a_run_that_ends_deletes_the_previous_one(tmp_path):
    folder = old_run(tmp_path / "run")
    with open_run_folder(folder, "training.output_dir", "train", overwrite=True):
        (folder / "metrics.jsonl").write_text('{"step": 1}\n')
    assert sorted(p.name for p in folder.iterdir()) == [".llm_pg_run.json", "metrics.jsonl"]


def test_overwrite_refuses_a_folder_that_is_not_an_llm_pg_run(tmp_path):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "config.yaml").write_text("my: config\n")
    (project / "report.md").write_text("# my notes\n")
    (project / "src" / "train.py").write_text("print('mine')\n")
    before = snapshot(project)
    with pytest.raises(RunFolderError, match="no llm-pg run") as refused:
        with open_run_folder(project, "training.output_dir", "train", overwrite=True):
            pytest.fail("the run must not start")
    assert "choose another training.output_dir" in str(refused.value)
    assert snapshot(project) == before
    assert not (project / LOCK_FILE).exists()


@pytest.mark.parametrize("saved", [False, True])
def test_a_killed_overwrite_is_settled_at_the_next_start(saved, tmp_path):
    """What SIGKILL leaves: the previous run in PREVIOUS beside the new run's files. The next start puts it back when
    the new run saved nothing, else deletes it (the new run is the one --resume continues)."""
    folder = old_run(tmp_path / "run")
    before = snapshot(folder)
    (folder / PREVIOUS).mkdir()
    for entry in list(folder.iterdir()):
        if entry.name != PREVIOUS:
            entry.rename(folder / PREVIOUS / entry.name)
    (folder / PREVIOUS / COMPLETE).write_bytes(b"")  # the move aside had finished
    write_marker(folder, "train", "train")
    (folder / "config.yaml").write_text("new: run\n")
    (folder / "metrics.jsonl").write_text('{"step": 1}\n')
    if saved:
        (folder / "checkpoints" / "step-000001").mkdir(parents=True)
    with open_run_folder(folder, "training.output_dir", "train", resume=True):
        pass
    if saved:
        assert not (folder / PREVIOUS).exists()
        assert (folder / "config.yaml").read_text() == "new: run\n"
        assert [p.name for p in (folder / "checkpoints").iterdir()] == ["step-000001"]
    else:
        assert snapshot(folder) == before


def test_the_cli_refused_after_the_folder_is_opened_loses_nothing(tmp_path, tiny_model_dir, capsys, caplog):
    """The user's path: `train --overwrite` with a data file that does not exist is refused in one line, after the
    folder was taken, and the finished run in it is as it was."""
    folder = old_run(tmp_path / "run")
    before = snapshot(folder)
    config = write_config_yaml(tmp_path / "c.yaml", tiny_model_dir, tmp_path / "typo.jsonl", folder)
    assert cli_main("train", "--config", str(config), "--overwrite") == 2
    assert_one_line_error(capsys.readouterr().err, "data.source")
    assert "the previous run in" in caplog.text and "is back as it was" in caplog.text  # set aside, then put back
    assert snapshot(folder) == before
    shutil.rmtree(folder)


def test_a_missing_validation_split_is_refused_at_set_up_and_leaves_no_folder(tmp_path, tiny_model_dir, capsys):
    """A data folder with train.jsonl and test.jsonl only, and a validation every 2 steps: refused before the first
    step (not after two), and the run folder it had created is gone, so the next run is not refused."""
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "test"):
        write_tiny_data(data / f"{split}.jsonl")
    config = write_config_yaml(tmp_path / "c.yaml", tiny_model_dir, data, tmp_path / "run",
                               **{"evaluation.eval_every": 2, "evaluation.metric": "rougeL"})
    assert cli_main("train", "--config", str(config)) == 2
    assert_one_line_error(capsys.readouterr().err, "validation")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("wrote", ["a pipeline's data stage, finished in seconds",
                                   "a first checkpoint that failed to save",
                                   "a warm start's sft/ that logged steps but has no final/"])
def test_what_is_not_yet_saved_does_not_count_as_saved(wrote, tmp_path):
    folder = old_run(tmp_path / "run")
    before = snapshot(folder)
    with pytest.raises(RuntimeError):
        with open_run_folder(folder, "training.output_dir", "train", overwrite=True):
            if wrote.startswith("a pipeline"):
                (folder / "data").mkdir()
                (folder / "data" / "train.jsonl").write_text("{}\n")
                (folder / "data" / "DONE").write_text("{}\n")
            elif wrote.startswith("a first checkpoint"):
                (folder / "checkpoints" / ".tmp-step-000001-1").mkdir(parents=True)  # the disk filled meanwhile
            else:
                (folder / "sft").mkdir()
                (folder / "sft" / "sft_metrics.jsonl").write_text('{"step": 1}\n')
            raise RuntimeError(wrote)
    assert snapshot(folder) == before


def test_putting_back_interrupted_is_finished_at_the_next_start(tmp_path, monkeypatch):
    """A second Ctrl-C while the new run's files are deleted: the old run is not lost, the next start restores it."""
    folder = old_run(tmp_path / "run")
    before = snapshot(folder)
    real_delete = overwrite.delete_entry
    calls = []

    def interrupted(entry):
        calls.append(entry.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_delete(entry)

    monkeypatch.setattr(overwrite, "delete_entry", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with open_run_folder(folder, "training.output_dir", "train", overwrite=True):
            (folder / "config.yaml").write_text("new: run\n")
            raise RuntimeError("the model failed to load")
    assert (folder / PREVIOUS / "final" / "model.safetensors").read_bytes() == b"old final"  # still there
    monkeypatch.setattr(overwrite, "delete_entry", real_delete)
    with pytest.raises(RunFolderError, match="already holds a run"):  # the next start: restored, then refused
        with open_run_folder(folder, "training.output_dir", "train"):
            pytest.fail("must be refused")
    assert snapshot(folder) == before


def rename_failing(monkeypatch, call: int, error: BaseException) -> None:
    """Path.rename raises `error` at its `call`-th use (a permission, a busy mount point, a Ctrl-C mid-move)."""
    real_rename, calls = Path.rename, []

    def rename(self, target):
        calls.append(self.name)
        if len(calls) == call:
            raise error
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)


@pytest.mark.parametrize("call, error", [(3, PermissionError(13, "Permission denied", "run/final")),
                                         (2, KeyboardInterrupt())])
def test_a_move_aside_that_fails_or_is_interrupted_is_undone(call, error, tmp_path, monkeypatch):
    folder = old_run(tmp_path / "run")
    before = snapshot(folder)
    rename_failing(monkeypatch, call, error)
    with pytest.raises(KeyboardInterrupt if isinstance(error, KeyboardInterrupt) else LlmPgError) as refused:
        with open_run_folder(folder, "training.output_dir", "train", overwrite=True):
            pytest.fail("the run must not start")
    monkeypatch.undo()
    if not isinstance(error, KeyboardInterrupt):  # a failure is one line; an interrupt stays an interrupt
        assert "cannot move the previous run" in str(refused.value) and "nothing was deleted" in str(refused.value)
    assert snapshot(folder) == before


def test_a_move_aside_killed_half_way_is_moved_back_at_the_next_start(tmp_path):
    folder = old_run(tmp_path / "run")
    before = snapshot(folder)
    (folder / PREVIOUS).mkdir()
    for name in ("final", "metrics.jsonl"):  # SIGKILL after two renames: no COMPLETE in PREVIOUS
        (folder / name).rename(folder / PREVIOUS / name)
    with pytest.raises(RunFolderError, match="already holds a run"):
        with open_run_folder(folder, "training.output_dir", "train"):
            pytest.fail("must be refused")
    assert snapshot(folder) == before


def test_a_deletion_cut_short_is_finished_and_never_mistaken_for_a_run(tmp_path):
    """Killed while the set-aside run was deleted (after the new run ended): what is left is DELETING, which the next
    start deletes; the new run is untouched."""
    folder = old_run(tmp_path / "run")
    with open_run_folder(folder, "training.output_dir", "train", overwrite=True):
        (folder / "metrics.jsonl").write_text('{"step": 1}\n')
        (folder / "checkpoints" / "step-000001").mkdir(parents=True)
    new = snapshot(folder)
    (folder / DELETING / "checkpoints" / "step-000002").mkdir(parents=True)  # the old run, half deleted
    (folder / DELETING / "metrics.jsonl").write_text('{"step": 2}\n')
    with open_run_folder(folder, "training.output_dir", "train", resume=True):
        pass
    assert snapshot(folder) == new


def test_moving_back_never_lands_on_an_entry_of_the_same_name(tmp_path):
    folder = old_run(tmp_path / "run")
    (folder / PREVIOUS).mkdir()
    (folder / PREVIOUS / "metrics.jsonl").write_text('{"step": 9}\n')  # an incomplete move, and a metrics.jsonl
    before = snapshot(folder)                                             # in the folder too
    with pytest.raises(LlmPgError, match="move one of them away by hand"):
        with open_run_folder(folder, "training.output_dir", "train", resume=True):
            pytest.fail("must be refused")
    assert snapshot(folder) == before
