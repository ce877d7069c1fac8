"""The tests' fork server (tests/forkserver.py) answers as a real `python -m llm_pg` subprocess would: the same exit
code, stdout, stderr and files; the caller's cwd first on sys.path; each environment its own server; a timeout
that kills the child and leaves the server serving."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import helpers
from helpers import cli_env, run_cli, write_config_yaml

pytestmark = [pytest.mark.skipif(sys.platform != "linux", reason="the fork server runs on Linux only"),
              pytest.mark.skipif(os.environ.get("LLM_PG_TEST_FORKSERVER") == "0",
                                 reason="LLM_PG_TEST_FORKSERVER=0: the fork server is off")]


def _both(monkeypatch, *args, cwd):
    """run_cli through the fork server, then as a real subprocess (LLM_PG_TEST_FORKSERVER=0)."""
    assert helpers._fork_server(cli_env()) is not None, "the fork server did not start"
    forked = run_cli(*args, cwd=cwd)
    monkeypatch.setenv("LLM_PG_TEST_FORKSERVER", "0")
    real = run_cli(*args, cwd=cwd)
    monkeypatch.delenv("LLM_PG_TEST_FORKSERVER")
    return forked, real


def _log_lines(text: str, tmp) -> list[str]:
    """The log and error lines, the folder replaced: progress bars redraw by the clock, so they are left out."""
    lines = [line.split("]", 1)[-1] if "%|" in line else line for line in text.replace(str(tmp), "TMP").splitlines()]
    return [line for line in lines if re.match(r"(INFO|WARNING|ERROR|llm-pg)|.*Warning: ", line)]


def test_a_refusal_and_the_help_are_the_same_forked_or_not(monkeypatch, tmp_path):
    for args in (["--help"], ["train", "--config", tmp_path / "missing.yaml"], ["train", "--bogus"], []):
        forked, real = _both(monkeypatch, *args, cwd=tmp_path)
        assert (forked.returncode, forked.stdout, forked.stderr) == (real.returncode, real.stdout, real.stderr), args


def test_a_training_run_is_the_same_forked_or_not(monkeypatch, tmp_path, tiny_model_dir, tiny_data_file):
    """Same log (the same logging set-up: the server's imports must not configure it), same metrics, same weights."""
    (tmp_path / "length.py").write_text("def reward(prompts, completions, **kw):\n"
                                        "    return [len(c) / 100 for c in completions]\n")
    results = {}
    for name in ("forked", "real"):
        folder = tmp_path / name
        folder.mkdir()
        config = write_config_yaml(folder / "c.yaml", tiny_model_dir, tiny_data_file, folder / "out",
                                   **{"training.max_steps": 2, "reward.components": [
                                       {"name": "length", "function": "length:reward"}]})
        (folder / "length.py").write_text((tmp_path / "length.py").read_text())  # imported from the cwd, as `-m` does
        if name == "real":
            monkeypatch.setenv("LLM_PG_TEST_FORKSERVER", "0")
        server = helpers._fork_server(cli_env())
        forked_before = server.children if server else None
        done = run_cli("train", "--config", config, cwd=folder)
        assert (server is not None and server.children == forked_before + 1) == (name == "forked")
        assert done.returncode == 0, done.stderr
        metrics = [json.loads(line) for line in (folder / "out" / "metrics.jsonl").read_text().splitlines()]
        results[name] = (done.stdout.replace(str(folder), "TMP"), _log_lines(done.stderr, folder),
                         [{k: v for k, v in row.items() if "time" not in k and "per_s" not in k} for row in metrics],
                         (folder / "out" / "final" / "model.safetensors").read_bytes())
    assert any(line.startswith("INFO llm_pg.") for line in results["forked"][1])  # the CLI's format, not the root's
    assert results["forked"] == results["real"]


def test_another_environment_gets_a_server_imported_with_it(monkeypatch):
    """What is read at import time (huggingface_hub reads HF_HOME then) is the caller's: a server per environment."""
    first = helpers._fork_server(cli_env())
    monkeypatch.setenv("HF_HOME", "/elsewhere")
    other = helpers._fork_server(cli_env())
    assert other is not first
    environ = Path(f"/proc/{other.process.pid}/environ").read_bytes().split(b"\0")
    assert b"HF_HOME=/elsewhere" in environ
    monkeypatch.delenv("HF_HOME")
    assert helpers._fork_server(cli_env()) is first  # kept, not started again


def test_a_timeout_kills_the_child_and_the_server_goes_on(tmp_path, tiny_model_dir, tiny_data_file):
    server = helpers._fork_server(cli_env())
    pid = server.process.pid
    config = write_config_yaml(tmp_path / "c.yaml", tiny_model_dir, tiny_data_file, tmp_path / "out",
                               **{"training.max_steps": 100000, "training.save_every": 0,
                                  "evaluation.eval_every": 0})
    with pytest.raises(subprocess.TimeoutExpired):
        server.run(["train", "--config", config], tmp_path, cli_env(), timeout=3, tmp=tmp_path)
    assert server.process.pid == pid and server.process.poll() is None  # the same server, still serving
    assert [p for p in os.listdir("/proc") if p.isdigit() and _parent(p) == pid] == []  # its child killed and reaped
    assert run_cli("--help", cwd=tmp_path).returncode == 0
    assert server.process.pid == pid


def test_a_server_that_died_fails_one_call_and_the_next_starts_a_fresh_one(tmp_path):
    server = helpers._fork_server(cli_env())
    server.process.kill()
    server.process.wait()
    with pytest.raises((OSError, RuntimeError)):  # the request cannot be written, or no answer comes
        server.run(["--help"], tmp_path, cli_env(), timeout=30, tmp=tmp_path)
    assert server.process is None
    assert run_cli("--help", cwd=tmp_path).returncode == 0


def _parent(pid: str) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):  # it ended while we looked
        return None


def test_importing_llm_pg_leaves_the_logging_of_the_importer_alone():
    """A library must not configure the root logger: rouge-score logs through absl, which does when nothing has."""
    code = ("import logging, llm_pg.cli, llm_pg.training.rl, llm_pg.evaluation.commands, llm_pg.pipelines.compare\n"
            "print(logging.root.handlers, logging.root.level)")
    done = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=120,
                          check=True)
    assert done.stdout.split() == ["[]", "30"]
