"""scripts/process_census.py: every Python process of a command, counted by kind, as a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "process_census.py"


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
    name = Path(sys.executable).name
    assert counts == {f"{name} -c": "2", f"{name} -m llm_pg": "2"}  # not "pytest": only a path says so


def test_a_missing_command_is_one_line():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stderr.strip() == \
        "process_census: give the command after --, e.g. -- make test"
