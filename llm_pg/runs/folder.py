"""The run folder: one run at a time, never silently overwritten or mixed, checked before any model loads.

`open_run_folder` is what `llm-pg train|sft|demo` wrap a run in (main process only):
1. the folder must be a folder we can write to (a file, a read-only file system or a missing permission fail
   here, in one line, not after minutes of model loading);
2. a lock file (PID, host, start time) is held for the run's lifetime; a second run into the same folder refuses,
   and a lock whose process is gone (a killed run) is taken over with a warning;
3. a folder that already holds a run is refused unless the caller resumes it or asked to overwrite it (then it is
   emptied first), so an old run's checkpoints never mix with a new run's log;
4. temporary folders that a killed or failed save left behind (`.tmp-*`) are deleted.
The resumed config's comparison with the saved one lives in llm_pg/config/resume.py.
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

from llm_pg.errors import LlmPgError

logger = logging.getLogger(__name__)
LOCK_FILE = ".llm_pg.lock"
# What a run (train, sft) writes; any of these means the folder already holds one.
RUN_FILES = ("config.yaml", "metrics.jsonl", "checkpoints", "final", "best", "sft_metrics.jsonl", "eval_before.json",
             "eval_after.json", "report.md", "sft")


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


def acquire_lock(path: Path, command: str, field: str) -> RunLock:
    """Create `path` exclusively; refuse when a live run holds it, take it over when its process is gone."""
    mine = RunLock(os.getpid(), socket.gethostname(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), command,
                   _process_start(os.getpid()))
    for _ in range(5):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_lock(path)
            if holder is None:
                continue  # released meanwhile: try again
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


def release_lock(path: Path, lock: RunLock) -> None:
    holder = _read_lock(path) if path.exists() else None
    if holder is not None and holder.pid == lock.pid and holder.started == lock.started:
        path.unlink(missing_ok=True)


def holds_run(folder: Path) -> list[str]:
    """The run files already in `folder` (empty when it holds none)."""
    return [name for name in RUN_FILES if (folder / name).exists()]


def clear_folder(folder: Path) -> None:
    """--overwrite: delete everything in the folder but our own lock."""
    for entry in folder.iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


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


@contextlib.contextmanager
def open_run_folder(folder: str | Path, field: str, command: str, resume: bool = False, overwrite: bool = False):
    """Hold `folder` for a run (main process only; other processes just run).  See the module docstring."""
    folder = Path(folder)
    if not is_main_process():
        yield folder
        return
    check_writable(folder, field)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / LOCK_FILE
    lock = acquire_lock(lock_path, command, field)
    try:
        found = holds_run(folder)
        if found and overwrite:
            logger.warning("--overwrite: deleting the previous run in %s (%s)", folder, ", ".join(found))
            clear_folder(folder)
        elif found and not resume:
            flags = "--resume to continue it, " if command in ("train", "demo", "rm") else ""
            raise RunFolderError(f"{field}: {folder} already holds a run ({', '.join(found)}); use {flags}--overwrite "
                                 f"to delete it first, or choose another {field}")
        clean_temporary(folder)
        yield folder
    finally:
        release_lock(lock_path, lock)
        if created and not holds_run(folder):  # a run that failed before writing its files leaves no folder
            shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def lock_output_file(path: str | Path, command: str, field: str):
    """A single output file (eval's scores): its folder is created and checked, a <file>.lock held meanwhile."""
    path = Path(path)
    if path.is_dir():
        raise RunFolderError(f"{field}: {path} is a folder; give a file name such as {path / 'eval.json'}")
    check_writable(path.parent, field)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    lock = acquire_lock(lock_path, command, field)
    try:
        yield path
    finally:
        release_lock(lock_path, lock)
