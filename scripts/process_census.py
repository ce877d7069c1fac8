"""Every Python process a command starts, by kind: how many, and their summed and mean lifetimes.

    python scripts/process_census.py -- make test            # what the test suite's processes cost
    python scripts/process_census.py --log census.tsv -- make test PYTEST_ARGS="-k compare"

A `sitecustomize.py` in a temporary folder, put first on PYTHONPATH, makes each Python interpreter that inherits the
environment append one line at exit (pid, parent pid, start time, seconds alive, command line) to the log. Processes
killed by a signal, or ending with os._exit, write nothing; interpreters started with a PYTHONPATH of their own or
with -S/-I are not seen. Lifetimes are wall seconds, so a parent that waits for its children counts their time too.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HOOK = '''import atexit, os, time
_log, _start = os.environ.get("PROCESS_CENSUS_LOG"), time.time()
def _write():
    try:
        cmd = open("/proc/self/cmdline", "rb").read().replace(b"\\0", b" ").decode(errors="replace")[:300]
        with open(_log, "a") as f:
            f.write(f"{os.getpid()}\\t{os.getppid()}\\t{_start:.3f}\\t{time.time() - _start:.3f}\\t{cmd}\\n")
    except OSError:
        pass
if _log:
    atexit.register(_write)
'''


def kind(command: str) -> str:
    """A process's kind: the llm_pg command, the script, the launcher, pytest, or the command's first words.

    Read from the program and its options only: arguments name paths (pytest's temporary folders among them)."""
    words = command.split()
    program = Path(words[0]).name if words else ""
    if words[1:3] == ["-m", "accelerate.commands.launch"] or (program == "accelerate" and words[1:2] == ["launch"]):
        return "accelerate launch (the launcher)"
    if "-c" in words[1:4]:  # python -c CODE (pytest-xdist's workers are python -u -c)
        return " ".join([program, *words[1:words.index("-c") + 1]])
    for pattern, name in ((r"-m llm_pg (\w+)", "llm_pg {}"), (r"^llm-pg (\w+)", "llm_pg {}"),
                          (r"^python\S* (?:-\S+ )*(?:\S*/)?scripts/(\w+\.py)", "script {}")):
        found = re.search(pattern, " ".join([program, *words[1:]]))
        if found:
            return name.format(found.group(1))
    if words[1:3] == ["-m", "pytest"] or program in ("pytest", "py.test"):
        return "pytest"
    return " ".join([program, *words[1:3]])[:70]


def summarize(log: Path) -> str:
    count, seconds = collections.Counter(), collections.Counter()
    for line in log.read_text().splitlines():
        fields = line.split("\t", 4)
        if len(fields) == 5:
            count[kind(fields[4])] += 1
            seconds[kind(fields[4])] += float(fields[3])
    lines = [f"{sum(count.values())} processes, {sum(seconds.values()):.0f} s alive in all",
             "| processes | seconds alive | mean | kind |", "|---|---|---|---|"]
    lines += [f"| {count[k]} | {seconds[k]:.1f} | {seconds[k] / count[k]:.2f} | {k} |"
              for k, _ in seconds.most_common()]
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
