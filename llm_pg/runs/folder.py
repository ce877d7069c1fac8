"""The run folder: one run at a time, never silently overwritten or mixed, checked before any model loads.

Every command that writes a run folder (`train`, `demo`, `sft`, `rm`, `dpo`, `rlhf`), from the CLI or from Python
(`llm_pg.train`, `train_sft`, `train_reward_model`, `train_dpo`, `run_pipeline`), holds it through `open_run` (main
process only):
1. the folder must be a folder we can write to (a file, a read-only file system or a missing permission fail
   here, in one line, not after minutes of model loading), and must not lie inside another run's folder (except
   the sub-runs a run writes itself: a warm start's sft/, the pipeline's stages);
2. a lock file (PID, host, start time) is held for the run's lifetime; a second run into the same folder refuses,
   and a lock whose process is gone (a killed run) is taken over with a warning;
3. the folder's kind marker (.llm_pg_run.json: train, sft, rm, dpo or rlhf) says which command's run it holds (for a
   folder written before markers existed, the kind is read from its files). A folder that holds a run of another
   kind is refused, and one that holds a run of the same kind is refused unless the caller resumes it or asked to
   overwrite it, so an old run's checkpoints never mix with a new run's log. --overwrite deletes only an llm-pg
   run (a folder of other files that happen to be named config.yaml, report.md, ... is refused), and only when
   the new run ends: until then the old run waits in .llm_pg-previous/, and a new run that is refused, fails or
   is stopped before saving anything puts it back as it was (llm_pg/runs/overwrite.py);
4. temporary folders that a killed or failed save left behind (`.tmp-*`) are deleted;
5. `train` and `rm`: the resumed config and the content of the data are checked against the run's and every
   start is recorded (llm_pg/runs/resume.py).
`llm-pg eval` writes two files, not a folder: `lock_output_file` locks them and never replaces a file that an
earlier `llm-pg eval` did not write.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from collections.abc import Callable

from llm_pg.errors import LlmPgError
from llm_pg.runs.marker import KINDS, MARKER, read_marker, write_marker
from llm_pg.runs.overwrite import (PIPELINE_STAGES, PREVIOUS, delete_entry, delete_previous, put_back,
                                   saved_anything, set_aside, settle_leftover, started)

logger = logging.getLogger(__name__)
LOCK_FILE = ".llm_pg.lock"
# What a run writes; any of these means the folder already holds one.
RUN_FILES = ("config.yaml", "metrics.jsonl", "checkpoints", "final", "best", "sft_metrics.jsonl", "eval_before.json",
             "eval_after.json", "report.md", "sft", "rm_metrics.jsonl", "comparison.json",
             "rm_proxy", "rm_gold", "dpo_metrics.jsonl")
KIND_OF = {"train": "train", "demo": "train", "sft": "sft", "rm": "rm", "dpo": "dpo", "rlhf": "rlhf"}  # command -> kind
RESUMABLE = ("train", "rm")
# The runs that a run writes inside its own folder: {folder path, '*' for any one name: kind}. rl/candidates/*: the
# candidate RL runs of the pipeline's rlhf.choose (llm_pg/pipelines/rlhf_choose.py).
SUB_RUNS = {"train": {"sft": "sft"}, "rlhf": {"sft": "sft", "rm_proxy": "rm", "rm_gold": "rm", "rl": "train",
                                               "dpo": "dpo", "rl/candidates/*": "train"}}


class RunFolderError(LlmPgError):
    """An output folder that cannot take this run: not writable, in use, or holding another run."""


@dataclass
class RunLock:
    """Who holds a folder: written as JSON to <folder>/.llm_pg.lock (or <file>.lock for a single output file)."""

    pid: int
    host: str
    started: str  # ISO 8601, UTC
    command: str
    process_start: str | None = None  # the PID's start time in clock ticks (Linux), to notice a reused PID

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host}, `llm-pg {self.command}` started {self.started}"


def is_main_process() -> bool:
    """Under `accelerate launch` every process runs the CLI; only rank 0 owns the folder."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def check_writable(folder: Path, field: str) -> None:
    """Fail in one line when `folder` cannot be created or written; creates nothing that was not there."""
    folder = Path(folder)
    if not str(folder).strip():
        raise RunFolderError(f"{field}: is empty; name a folder for the run's files")
    existing = folder
    while not existing.exists():  # the nearest part of the path that exists must be a writable folder
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        what = "is a file" if existing == folder else f"lies under {existing}, which is a file"
        raise RunFolderError(f"{field}: {folder} {what}, not a folder; choose another {field}")
    probe = existing / f".llm_pg-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise RunFolderError(f"{field}: cannot write to {existing} ({e.strerror or type(e).__name__}); choose a "
                             f"writable {field}") from None


def _process_start(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat: when the process started (None off Linux or when it is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(lock: RunLock) -> bool:
    """Whether the lock's process still runs (a lock from another host counts as alive: we cannot tell)."""
    if lock.host != socket.gethostname():
        return True
    try:
        os.kill(lock.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    started = _process_start(lock.pid)
    return lock.process_start is None or started is None or started == lock.process_start


def _read_lock(path: Path) -> RunLock | None:
    for _ in range(20):  # a lock created a moment ago may not be written yet
        try:
            return RunLock(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):
            time.sleep(0.05)
    return RunLock(pid=-1, host="?", started="?", command="?")  # unreadable for a second: a torn, stale lock


def acquire_lock(path: Path, command: str, field: str) -> RunLock | None:
    """Create `path` exclusively; refuse when a live run holds it, take it over when its process is gone.  None
    when this process holds it already (nothing to release)."""
    mine = RunLock(os.getpid(), socket.gethostname(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), command,
                   _process_start(os.getpid()))
    for _ in range(5):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_lock(path)
            if holder is None:
                continue  # released meanwhile: try again
            if holder.pid == mine.pid and holder.host == mine.host and holder.process_start == mine.process_start:
                return None  # this process holds it already (a run inside the caller's open_run): the caller releases
            if _alive(holder) and holder.pid != -1:
                raise RunFolderError(f"{field}: {path.parent} is in use by another run ({holder.describe()}); wait "
                                     f"for it to end or choose another {field} (if that run is gone, delete "
                                     f"{path})") from None
            logger.warning("taking over the stale lock %s of a run that is gone (%s)", path, holder.describe())
            with contextlib.suppress(FileNotFoundError):  # only one of two runs taking it over wins the rename
                os.rename(path, path.with_name(f"{path.name}.stale-{os.getpid()}"))
                os.unlink(path.with_name(f"{path.name}.stale-{os.getpid()}"))
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(asdict(mine)))
        return mine
    raise RunFolderError(f"{field}: could not take the lock {path}; another run keeps taking it")


def release_lock(path: Path, lock: RunLock | None) -> None:
    holder = _read_lock(path) if path.exists() and lock is not None else None
    if holder is not None and holder.pid == lock.pid and holder.started == lock.started:
        path.unlink(missing_ok=True)


def holds_run(folder: Path) -> list[str]:
    """The run files already in `folder` (empty when it holds none)."""
    return [name for name in RUN_FILES if (folder / name).exists()]


def clean_temporary(folder: Path) -> list[Path]:
    """Delete what interrupted saves left: .tmp-* folders (checkpoints, final, best) and config.tmp."""
    leftovers = [*folder.glob(".tmp-*"), *(folder / "checkpoints").glob(".tmp-*"), *folder.glob("*.tmp")]
    for path in leftovers:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if leftovers:
        logger.warning("deleted %d temporary file(s) left by an interrupted save: %s", len(leftovers),
                       ", ".join(str(p) for p in leftovers))
    return leftovers


def infer_kind(folder: Path) -> str | None:
    """The kind of a run written before kind markers existed, from its files (None when they do not tell)."""
    folder = Path(folder)
    if any((folder / stage / "DONE").is_file() for stage in PIPELINE_STAGES) or (folder / "comparison.json").exists():
        return "rlhf"
    if (folder / "rm_metrics.jsonl").exists() or (folder / "final" / "rm_settings.json").exists():
        return "rm"
    if any((folder / name).exists() for name in ("metrics.jsonl", "config_history.jsonl", "checkpoints",
                                                 "reward_signatures.json", "eval_before.json", "eval_after.json")):
        return "train"
    if (folder / "dpo_metrics.jsonl").exists():
        return "dpo"
    return "sft" if (folder / "sft_metrics.jsonl").exists() else None


def run_kind(folder: Path) -> str | None:
    marker = read_marker(folder)
    return marker["kind"] if marker else infer_kind(folder)


def sub_run_kind(kind: str, parts: tuple[str, ...]) -> str | None:
    """The kind of the run that a run of `kind` writes at the path `parts` inside its folder (SUB_RUNS), or None."""
    for path, sub_kind in SUB_RUNS.get(kind, {}).items():
        pattern = path.split("/")
        if len(pattern) == len(parts) and all(p in ("*", part) for p, part in zip(pattern, parts)):
            return sub_kind
    return None


def check_not_inside_another_run(folder: Path, field: str, kind: str) -> None:
    """Refuse a folder inside another run's folder, unless it is one of that run's own sub-runs (of its kind), and
    refuse a sub-run while another process holds the run around it. Only marked folders count as runs here: a
    project folder that merely holds a file named like a run file never blocks the runs below it."""
    folder = Path(os.path.abspath(folder))
    for parent in folder.parents:
        marker = read_marker(parent) if (parent / MARKER).exists() else None
        if marker is None:
            continue
        name = folder.relative_to(parent).parts
        if sub_run_kind(marker["kind"], name) != kind:
            raise RunFolderError(f"{field}: {folder} lies inside {KINDS[marker['kind']]} in {parent}; writing there "
                                 f"would mix two runs: choose a {field} outside it")
        holder = _read_lock(parent / LOCK_FILE) if (parent / LOCK_FILE).exists() else None
        if holder is not None and holder.pid not in (os.getpid(), -1) and _alive(holder):
            raise RunFolderError(f"{field}: {parent} is in use by another run ({holder.describe()}); wait for it "
                                 f"to end or choose another {field}")
        return


def _refuse_or_set_aside(folder: Path, field: str, command: str, resume: bool, overwrite: bool) -> Path | None:
    """A folder that holds a run of another kind, or another run of this kind, is refused; with --overwrite an
    llm-pg run is set aside (its folder, returned) and anything else refused."""
    kind, found = KIND_OF[command], holds_run(folder)
    held = run_kind(folder) if found else None
    if found and overwrite:
        if held is None:
            raise RunFolderError(f"{field}: {folder} holds {', '.join(found)} but no llm-pg run (no {MARKER}, no "
                                 f"run's log); --overwrite deletes only llm-pg runs: choose another {field}")
        logger.warning("--overwrite: the previous run in %s (%s) waits in %s until this run ends (then deleted; put "
                       "back if this run stops before saving anything)", folder, ", ".join(found), PREVIOUS)
        return set_aside(folder, (LOCK_FILE,), field)
    if held is not None and held != kind:
        raise RunFolderError(f"{field}: {folder} holds {KINDS[held]} ({', '.join(found)}), not {KINDS[kind]}; "
                             f"choose another {field}, or use --overwrite to delete that run first")
    elif found and not resume:
        flags = "--resume to continue it, " if kind in RESUMABLE else ""
        raise RunFolderError(f"{field}: {folder} already holds a run ({', '.join(found)}); use {flags}--overwrite "
                             f"to delete it first, or choose another {field}")
    return None


@contextlib.contextmanager
def open_run_folder(folder: str | Path, field: str, command: str, resume: bool = False, overwrite: bool = False):
    """Hold `folder` for a run of `command` (main process only; other processes just run).  See the module
    docstring; the config checks of a resumed run are `open_run`'s."""
    folder = Path(folder)
    if resume and overwrite:
        raise RunFolderError(f"{command}: --resume continues the run in {field} and --overwrite deletes it; give one "
                             "of them")
    if not is_main_process():
        yield folder
        return
    check_writable(folder, field)
    check_not_inside_another_run(folder, field, KIND_OF[command])
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / LOCK_FILE
    lock = acquire_lock(lock_path, command, field)
    previous = None  # --overwrite: the old run, set aside (llm_pg/runs/overwrite.py)
    try:
        settle_leftover(folder, (LOCK_FILE,))
        previous = _refuse_or_set_aside(folder, field, command, resume, overwrite)
        marker = read_marker(folder)
        if marker is None or marker["kind"] != KIND_OF[command]:
            write_marker(folder, KIND_OF[command], command)
        clean_temporary(folder)
        yield folder
    except BaseException as e:
        if previous is not None and not saved_anything(folder):  # refused, failed or stopped before saving
            restoring, previous = previous, None  # if putting back is interrupted, the next start finishes it
            put_back(folder, restoring, (LOCK_FILE,))
            logger.warning("--overwrite: this run saved nothing; the previous run in %s is back as it was", folder)
        elif created and isinstance(e, LlmPgError) and not started(folder):  # refused in its set-up: no half-made
            for entry in folder.iterdir():  # folder to trip the next run (the lock goes with the folder, below)
                if entry.name != LOCK_FILE:
                    delete_entry(entry)
        raise
    finally:
        if previous is not None:  # the new run ended, or saved something before it failed
            delete_previous(previous)
        release_lock(lock_path, lock)
        if created and not holds_run(folder):  # a run that failed before writing its files leaves no folder
            shutil.rmtree(folder, ignore_errors=True)


FOLDER_FIELDS = {"train": "training.output_dir", "demo": "training.output_dir", "sft": "sft.output_dir",
                 "rm": "rm.output_dir", "dpo": "dpo.output_dir", "rlhf": "rlhf.output_dir"}


@contextlib.contextmanager
def open_run(config, command: str, resume: bool = False, overwrite: bool = False, folder: str | Path | None = None):
    """The one way into a run folder, for the CLI and the library alike: `open_run_folder` on the command's
    output folder (`folder` overrides it: a warm start's sft/), then, for `train` and `rm` on the main process, the
    resumed config and data checked against the run's and this start recorded (runs/resume.py start_run)."""
    field = FOLDER_FIELDS[command]
    section, key = field.split(".")
    path = Path(folder if folder is not None else getattr(getattr(config, section), key))
    with open_run_folder(path, field, command, resume, overwrite) as held:
        if KIND_OF[command] in RESUMABLE and is_main_process():
            from llm_pg.runs.resume import start_run

            start_run(config, held, KIND_OF[command], resume)
        yield held


@contextlib.contextmanager
def lock_output_file(path: str | Path, command: str, field: str, companions: tuple[Path, ...] = (),
                     owned: Callable[[Path], bool] | None = None, overwrite: bool = False):
    """A single output file (eval's scores) and its companions (eval's generations): the folder is created and
    checked and a <file>.lock held meanwhile. An existing output that `owned` does not recognize as this command's
    (a run's metrics.jsonl, a training run's eval_after.json) is never replaced; one that it does is replaced only
    with `overwrite`."""
    path = Path(path)
    if path.is_dir():
        raise RunFolderError(f"{field}: {path} is a folder; give a file name such as {path / 'eval.json'}")
    check_writable(path.parent, field)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    lock = acquire_lock(lock_path, command, field)
    try:
        for existing in (p for p in (path, *companions) if p.exists()):
            if owned is not None and not owned(path):
                kind = run_kind(path.parent)
                where = f" (it belongs to {KINDS[kind]} in {path.parent})" if kind else ""
                raise RunFolderError(f"{field}: {existing} exists and was not written by `llm-pg {command}`{where}; "
                                     f"choose another {field}")
            if not overwrite:
                raise RunFolderError(f"{field}: {existing} holds an earlier `llm-pg {command}` output; use --overwrite "
                                     f"to replace it, or choose another {field}")
        yield path
    finally:
        release_lock(lock_path, lock)
