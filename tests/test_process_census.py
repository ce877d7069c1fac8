"""scripts/process_census.py: every Python process of a command, counted by kind, as a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "process_census.py"
sys.path.insert(0, str(SCRIPT.parent))
from process_census import busy_seconds, kind  # noqa: E402


@pytest.mark.parametrize("command, expected", [
    ("/v/bin/python -m llm_pg train --config /tmp/pytest-of-root/x/c.yaml", "llm_pg train"),
    ("/v/bin/python -u -m llm_pg train --config c.yaml", "llm_pg train"),
    ("/v/bin/python /v/bin/llm-pg compare --config /tmp/pytest-1/c.yaml", "llm_pg compare"),  # a console script
    ("/v/bin/python -m accelerate.commands.launch -m llm_pg train", "accelerate launch (the launcher)"),
    ("/v/bin/python /v/bin/accelerate launch --num_processes 2 -m llm_pg train", "accelerate launch (the launcher)"),
    ("/v/bin/python /repo/scripts/bench_rl.py --model /tmp/pytest-of-root/m", "script bench_rl.py"),
    ("/v/bin/python -m pytest -c pytest.ini tests", "pytest"),
    ("/v/bin/python -X importtime -W ignore -c print(1)", "python -c"),
    ("/v/bin/python -B -c from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=18)",
     "multiprocessing (spawned worker or resource tracker)"),
    ("/v/bin/python -m pip install x", "python -m pip"),
    ("[forked] /v/bin/python /repo/llm_pg/__main__.py train --config c.yaml", "llm_pg train (forked)"),
])
def test_the_kind_is_read_from_the_interpreter_and_what_it_runs(command, expected):
    assert kind(command) == expected


def test_busy_seconds_count_overlapping_processes_once():
    assert busy_seconds([(0.0, 2.0), (1.0, 3.0), (5.0, 6.0), (5.5, 5.7)]) == 4.0
    assert busy_seconds([]) == 0.0


def test_each_python_process_is_logged_once_with_its_kind(tmp_path):
    child = "import time; time.sleep(0.3)"
    parent = ("import subprocess, sys; [subprocess.run([sys.executable, '-m', 'llm_pg', '--help', '/tmp/pytest-of-x'], "
              f"capture_output=True) for _ in range(2)]; subprocess.run([sys.executable, '-c', {child!r}])")
    log = tmp_path / "census.tsv"
    done = subprocess.run([sys.executable, str(SCRIPT), "--log", str(log), "--", sys.executable, "-c", parent],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [line.split("\t") for line in log.read_text().splitlines()]
    assert len(rows) == 4  # the parent, two llm_pg processes, one sleeper
    parent_pid = {r[0] for r in rows if r[4].startswith(sys.executable + " -c import subprocess")}
    assert len(parent_pid) == 1 and sum(r[1] in parent_pid for r in rows) == 3  # its three children
    counts = {line.split(" | ")[-1].rstrip(" |"): line.split(" | ")[0].lstrip("| ") for line in
              done.stdout.splitlines() if line.startswith("| ") and not line.startswith("| processes")}
    assert "4 processes" in done.stdout
    assert counts == {f"{Path(sys.executable).name} -c": "2", "llm_pg --help": "2"}  # not "pytest": a path says so


def test_a_forked_child_is_logged_with_its_own_command_and_birth(tmp_path):
    """tests/forkserver.py's children: /proc/self/cmdline is the server's, so the hook reads sys.argv after a fork."""
    parent = ("import os, sys, time\ntime.sleep(0.5)\npid = os.fork()\nif pid == 0:\n"
              "    sys.argv = ['/repo/llm_pg/__main__.py', 'eval', '--model', 'm']\n    sys.exit(0)\n"
              "os.waitpid(pid, 0)")
    (tmp_path / "forker.py").write_text(parent)  # a file: a command line with newlines would split the log's lines
    log = tmp_path / "census.tsv"
    done = subprocess.run([sys.executable, str(SCRIPT), "--log", str(log), "--", sys.executable,
                           str(tmp_path / "forker.py")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = {kind(r[4]): r for r in (line.split("\t") for line in log.read_text().splitlines())}
    assert set(rows) == {"script forker.py", "llm_pg eval (forked)"}
    forked, forker = rows["llm_pg eval (forked)"], rows["script forker.py"]
    assert forked[1] == forker[0]  # its parent
    assert float(forked[2]) >= float(forker[2]) + 0.5 and float(forked[3]) < 0.5  # born at the fork, not before


def test_a_missing_command_is_one_line():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stderr.strip() == \
        "process_census: give the command after --, e.g. -- make test"
