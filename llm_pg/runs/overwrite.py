"""--overwrite without losing the old run before the new one has something to show for it.

`set_aside` moves the old run into <folder>/.llm_pg-previous/ (renames: nothing copied, nothing deleted) and
marks the move complete; when the new run ends that folder is deleted, unless the new run raised before it saved
anything (`saved_anything`: a finished checkpoint, final/, best/, a policy, a finished warm start or pipeline
stage), and then `put_back` restores the old run as it was. A .llm_pg-previous/ left by a killed process is
settled at the next start in the folder (`settle_leftover`): put back when the move was not complete or the killed
run saved nothing, else deleted (renamed first, so a deletion cut short is never mistaken for a set-aside run).
Nothing is ever moved onto an existing entry. The folder's lock is held by the caller (llm_pg/runs/folder.py).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from llm_pg.errors import LlmPgError

logger = logging.getLogger(__name__)
PREVIOUS = ".llm_pg-previous"
DELETING = ".llm_pg-previous.deleting"  # PREVIOUS renamed whole before it is deleted: a half-deleted one is no run
COMPLETE = ".set-aside-complete"  # written into PREVIOUS once every entry is in it
PIPELINE_STAGES = ("data", "sft", "rm_proxy", "rm_gold", "rl", "dpo", "compare")  # llm_pg/pipelines/rlhf.py's
LOGS = ("metrics.jsonl", "sft_metrics.jsonl", "rm_metrics.jsonl", "dpo_metrics.jsonl")  # written from the first step


def saved_anything(folder: Path) -> bool:
    """Whether the run in `folder` has saved what a resume or a user could use: a finished checkpoint
    (checkpoints/step-*, renamed into place whole), final/ or best/ (the same, with the files that describe them),
    a policy of policy_steps, a warm start's sft/final, or a pipeline stage after `data` marked DONE (the data
    stage takes seconds: the old pipeline is worth more)."""
    folder = Path(folder)
    return any([*folder.glob("checkpoints/step-*"), *folder.glob("policies/step-*"),
                *(folder / name for name in ("final", "best", "sft/final") if (folder / name).exists()),
                *(folder / stage / "DONE" for stage in PIPELINE_STAGES if stage != "data" and
                  (folder / stage / "DONE").is_file())])


def started(folder: Path) -> bool:
    """Whether the run in `folder` got past its set-up: it saved something, logged a step or evaluated."""
    return saved_anything(folder) or any((folder / n).is_file() and (folder / n).stat().st_size for n in LOGS) or \
        (folder / "eval_before.json").exists()


def delete_entry(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
    else:
        entry.unlink()


def _move_back(folder: Path, previous: Path) -> None:
    """Every entry of `previous` back into `folder`, then `previous` itself gone; never onto an existing entry
    (a rename would silently replace a file or an empty folder)."""
    clash = [e.name for e in previous.iterdir() if e.name != COMPLETE and os.path.lexists(folder / e.name)]
    if clash:
        raise LlmPgError(f"{previous} holds a run set aside by --overwrite, and {folder} holds {', '.join(clash)} "
                         f"too; move one of them away by hand (nothing was changed)")
    (previous / COMPLETE).unlink(missing_ok=True)
    for entry in previous.iterdir():
        entry.rename(folder / entry.name)
    previous.rmdir()


def delete_previous(previous: Path) -> None:
    """Delete a set-aside run for good: renamed first, so a deletion cut short leaves DELETING, never a PREVIOUS
    without its sentinel that the next start would mistake for an interrupted move."""
    deleting = previous.with_name(DELETING)
    if deleting.exists():
        shutil.rmtree(deleting, ignore_errors=True)
    os.replace(previous, deleting)
    shutil.rmtree(deleting, ignore_errors=True)


def set_aside(folder: Path, keep: tuple[str, ...], field: str) -> Path:
    """Move everything in `folder` but `keep` into folder/PREVIOUS; on any failure, what moved goes back and the
    caller gets one line."""
    previous = folder / PREVIOUS
    previous.mkdir()
    try:
        for entry in folder.iterdir():
            if entry.name not in (*keep, PREVIOUS, DELETING):
                entry.rename(previous / entry.name)
        (previous / COMPLETE).write_bytes(b"")
    except BaseException as e:  # a permission, a full disk, a Ctrl-C: what moved goes back
        _move_back(folder, previous)
        if not isinstance(e, OSError):
            raise
        raise LlmPgError(f"{field}: cannot move the previous run in {folder} aside ({e.strerror or e}: "
                         f"{e.filename}); nothing was deleted: free space or fix the permission, or choose another "
                         f"{field}") from None
    return previous


def put_back(folder: Path, previous: Path, keep: tuple[str, ...]) -> None:
    """The new run saved nothing: delete what it wrote and move the previous run back where it was."""
    for entry in folder.iterdir():
        if entry.name not in (*keep, PREVIOUS):
            delete_entry(entry)
    _move_back(folder, previous)


def settle_leftover(folder: Path, keep: tuple[str, ...]) -> None:
    """A PREVIOUS left by a killed --overwrite run: an incomplete move goes back as it was; after a complete one the
    old run is put back when the killed run saved nothing, else deleted (the new run is what --resume continues)."""
    if (folder / DELETING).exists():  # a set-aside run whose deletion was cut short
        shutil.rmtree(folder / DELETING, ignore_errors=True)
    previous = folder / PREVIOUS
    if not previous.is_dir():
        return
    if not (previous / COMPLETE).exists():  # killed while moving: the folder holds the old run's other entries
        logger.warning("moving back the run in %s: an --overwrite was killed while setting it aside", previous)
        _move_back(folder, previous)
    elif saved_anything(folder):
        logger.warning("deleting %s: the --overwrite run that set it aside was killed after saving", previous)
        delete_previous(previous)
    else:
        logger.warning("putting back the run in %s: the --overwrite run that set it aside was killed before saving "
                       "anything", previous)
        put_back(folder, previous, keep)
