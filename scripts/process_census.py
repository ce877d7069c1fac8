"""Every Python process a command starts, by kind: how many, and their summed and mean lifetimes.

    python scripts/process_census.py -- make test            # what the test suite's processes cost
    python scripts/process_census.py --log census.tsv -- make test PYTEST_ARGS="-k compare"

A `sitecustomize.py` in a temporary folder, put first on PYTHONPATH, makes each Python interpreter that inherits the
environment append one line at exit (pid, parent pid, start time, seconds alive, command line) to the log. A forked
child (tests/forkserver.py's) is logged from its own sys.argv and birth, its kind marked "(forked)". Not seen:
processes killed by a signal or ending with os._exit without running atexit, interpreters started with a PYTHONPATH
of their own or with -S, -I or -E; and the hook stands in front of any other sitecustomize module (a distribution's
or a coverage set-up's), which then does not run. Linux only (/proc/self/cmdline). Lifetimes are wall seconds, so a
parent that waits for its children counts their time too; for each process with 5 or more children (pytest-xdist's
workers) the summary also gives the time during which at least one of them ran.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HOOK = '''import atexit, os, sys, time
_log, _start, _forked = os.environ.get("PROCESS_CENSUS_LOG"), time.time(), False
def _fork():  # a fork (tests/forkserver.py's children) is a process of its own, born now, running its own argv
    global _start, _forked
    _start, _forked = time.time(), True
def _write():
    try:
        cmd = open("/proc/self/cmdline", "rb").read().replace(b"\\0", b" ").decode(errors="replace")[:300]
        if _forked:
            cmd = ("[forked] " + sys.executable + " " + " ".join(sys.argv))[:300]
        cmd = cmd.replace("\\n", " ").replace("\\t", " ")  # one line of five tab-separated fields, whatever -c holds
        with open(_log, "a") as f:
            f.write(f"{os.getpid()}\\t{os.getppid()}\\t{_start:.3f}\\t{time.time() - _start:.3f}\\t{cmd}\\n")
    except OSError:
        pass
if _log:
    atexit.register(_write)
    os.register_at_fork(after_in_child=_fork)
'''
FORKED = "[forked] "  # how HOOK marks a forked child's command


def interpreter_options(words: list[str]) -> tuple[str, list[str]]:
    """(program, the words after the interpreter's own options) of a command line; a console script (its shebang
    makes Linux record `python /venv/bin/llm-pg ...`) is named by the script."""
    program = Path(words[0]).name if words else ""
    if program.startswith("python") and len(words) > 1 and not words[1].startswith("-") \
            and not words[1].endswith(".py"):
        return Path(words[1]).name, words[2:]
    i = 1
    while i < len(words) and words[i].startswith("-") and words[i] not in ("-c", "-m"):
        i += 2 if words[i] in ("-X", "-W") else 1  # options with a value
    return program, words[i:]


def kind(command: str) -> str:
    """A process's kind: the llm_pg command, the script, the launcher, pytest, multiprocessing's helpers, or the
    program and its first words. Read from the interpreter's options and the module or script they name; the
    arguments after it (paths, pytest's temporary folders among them) are not read."""
    if command.startswith(FORKED):  # logged from sys.argv, not /proc/self/cmdline (that is the forking parent's)
        return f"{kind(command[len(FORKED):])} (forked)"
    program, rest = interpreter_options(command.split())
    head = rest[:2]
    if head[:1] and head[0].endswith("llm_pg/__main__.py"):  # sys.argv of `python -m llm_pg COMMAND`
        return " ".join(["llm_pg", *rest[1:2]])
    if head[:1] == ["-c"]:
        code = " ".join(rest[1:3])
        return "multiprocessing (spawned worker or resource tracker)" if "multiprocessing" in code else f"{program} -c"
    if head == ["-m", "accelerate.commands.launch"] or (program == "accelerate" and head[:1] == ["launch"]):
        return "accelerate launch (the launcher)"
    if head == ["-m", "llm_pg"] or program == "llm-pg":
        command_name = rest[2:3] if head == ["-m", "llm_pg"] else rest[:1]
        return " ".join(["llm_pg", *command_name])
    if head[:1] and head[0].endswith(".py"):
        return f"script {Path(head[0]).name}"
    if head == ["-m", "pytest"] or program in ("pytest", "py.test"):
        return "pytest"
    return " ".join([program, *rest[:2]])[:70]


def busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """The length of the union of [start, end) intervals: the time at least one of them was running."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        total += max(0.0, stop - max(start, end))
        end = max(end, stop)
    return total


def summarize(log: Path) -> str:
    rows = [fields for fields in (line.split("\t", 4) for line in log.read_text().splitlines()) if len(fields) == 5]
    count, seconds = collections.Counter(), collections.Counter()
    children = collections.defaultdict(list)
    for pid, ppid, start, alive, command in rows:
        count[kind(command)] += 1
        seconds[kind(command)] += float(alive)
        children[ppid].append((float(start), float(start) + float(alive)))
    lines = [f"{len(rows)} processes, {sum(seconds.values()):.0f} s alive in all",
             "| processes | seconds alive | mean | kind |", "|---|---|---|---|"]
    lines += [f"| {count[k]} | {seconds[k]:.1f} | {seconds[k] / count[k]:.2f} | {k} |"
              for k, _ in seconds.most_common()]
    parents = [(pid, float(alive), command) for pid, _, _, alive, command in rows if len(children[pid]) >= 5]
    for pid, alive, command in parents:  # e.g. pytest-xdist's workers: how long they waited on processes
        lines.append(f"{kind(command)} (pid {pid}): {alive:.1f} s alive, {len(children[pid])} child processes "
                     f"running during {busy_seconds(children[pid]):.1f} s of it")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", type=Path, default=None, help="keep the raw log here (default: a temporary file)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        sys.exit("process_census: give the command after --, e.g. -- make test")
    with tempfile.TemporaryDirectory(prefix="census_") as hook_dir:
        (Path(hook_dir) / "sitecustomize.py").write_text(HOOK)
        log = args.log or Path(hook_dir) / "census.tsv"
        log.unlink(missing_ok=True)
        env = {**os.environ, "PROCESS_CENSUS_LOG": str(log.resolve()),
               "PYTHONPATH": os.pathsep.join(filter(None, [hook_dir, os.environ.get("PYTHONPATH")]))}
        status = subprocess.call(command, env=env)
        print(summarize(log) if log.exists() else "no process wrote to the log")
    sys.exit(status)


if __name__ == "__main__":
    main()
