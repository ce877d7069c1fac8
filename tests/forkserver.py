"""A fork server for the tests' `python -m llm_pg` subprocesses: the imports paid once per pytest worker, not per call.

Why: a new interpreter spends 8-10 s importing torch and transformers on a slow 2-core CPU (`python -X importtime -c
"import llm_pg.training.rl"`), longer than most of the tiny runs the tests start, and the tests start well over a
hundred of them. The server is a separate interpreter, started with the environment those subprocesses get
(helpers.cli_env()), that imports the modules once and then forks one child per call. Nothing else runs in it
before a fork: no torch op (so no thread pool exists to be lost in the child), no model, no logging set-up, so each
child is what a fresh `python -m llm_pg` would be once its imports were done.

What a child gets, as from subprocess.run: its own pid, the caller's cwd and environment, stdin from /dev/null (a
pytest-xdist worker's stdin), stdout and stderr captured to files, sys.argv and sys.path[0] as `python -m llm_pg
ARGS` sets them, the exit code of SystemExit (a traceback and 1 for an uncaught exception, minus the signal number
when killed), non-daemon threads joined and atexit handlers run before it exits. What it cannot get is another
import-time state, so each environment has its own server (helpers.run_cli; variables in IGNORED aside), and a
server whose imports printed anything, configured logging or left a thread running is not used.
LLM_PG_TEST_FORKSERVER=0 turns the servers off (every call a real subprocess).

Known differences, none of which a test here relies on: every child of a server has the server's string-hash seed
(fresh processes draw one each), so two forked runs compared with each other cannot expose an order that depends on
it; output goes to files, so a background process left holding stdout would not make the call hang as a pipe would;
a traceback shows runpy's frames from a file, not frozen; an uncaught KeyboardInterrupt exits with 1, not -2.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

# What `python -m llm_pg <command>` imports on its way to a run: the CLI, every stage, the tiny test model's class.
PRELOAD = ("llm_pg.cli", "llm_pg.training.rl", "llm_pg.evaluation.commands", "llm_pg.pipelines.compare",
           "transformers.models.llama.modeling_llama", "accelerate")
# Variables nothing reads at import time: pytest sets the first per test, the client reads the second, and torch writes
# its default inductor cache folder back into os.environ once anything compiles (the child would compute the same).
IGNORED = {"PYTEST_CURRENT_TEST", "LLM_PG_TEST_FORKSERVER", "TORCHINDUCTOR_CACHE_DIR"}


def _exit_code(code) -> int:
    """The status Python's own exit gives `sys.exit(code)`: None is 0, an int is itself, anything else is printed."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _finish(code: int) -> None:
    """The end of a Python process, without tearing down the interpreter: join non-daemon threads, run atexit
    handlers (logging.shutdown, weakref finalizers, temp folders), flush the streams, exit."""
    import atexit
    import threading

    threading._shutdown()  # what Py_FinalizeEx does first
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken stream must not change the exit code
            pass
    os._exit(code & 0xFF)


def _child(request: dict) -> None:
    """In the forked child: become `python -m llm_pg ARGS` in the request's cwd and environment, run, exit."""
    import importlib.util
    import runpy

    code = 1
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for fd, path, mode in ((0, os.devnull, os.O_RDONLY), (1, request["stdout"], os.O_WRONLY),
                               (2, request["stderr"], os.O_WRONLY)):
            target = os.open(path, mode)
            os.dup2(target, fd)
            os.close(target)
        sys.path[0] = os.getcwd()  # `python -m` puts the cwd first: a user's reward module beside the config
        sys.argv = [importlib.util.find_spec("llm_pg.__main__").origin, *request["args"]]  # as runpy leaves it
        runpy.run_module("llm_pg", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as stop:
        code = _exit_code(stop.code)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    finally:
        _finish(code)


def _imported_quietly() -> str:
    """Import PRELOAD with fds 1 and 2 caught: what they print, which a fresh child would print and a fork cannot."""
    import importlib
    import tempfile

    with tempfile.TemporaryFile() as said:
        saved = {fd: os.dup(fd) for fd in (1, 2)}  # fd 1 is the protocol pipe: nothing but answers may reach it
        for fd in saved:
            os.dup2(said.fileno(), fd)
        try:
            for name in PRELOAD:
                importlib.import_module(name)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
        said.seek(0)
        return said.read().decode(errors="replace")


def serve() -> None:
    """Import once, then one JSON request per line on stdin: fork, answer {"pid"}, wait, answer {"returncode"}."""
    import logging

    printed = _imported_quietly()
    unlike_fresh = [f"its imports printed {printed[:300]!r}"] if printed else []
    if logging.root.handlers:  # a fresh CLI sets up logging itself: an import that did it first changes every line
        unlike_fresh.append(f"its imports configured the root logger ({logging.root.handlers})")
    threads = len(os.listdir("/proc/self/task"))  # native ones too (OpenMP, tokenizers): a fork copies only this one
    if threads != 1:
        unlike_fresh.append(f"{threads} threads run after its imports")
    os.write(1, (json.dumps({"ready": True, "unlike_fresh": unlike_fresh}) + "\n").encode())
    for line in sys.stdin.buffer:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(request)  # never returns
        os.write(1, (json.dumps({"pid": pid}) + "\n").encode())
        _, status = os.waitpid(pid, 0)
        os.write(1, (json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n").encode())


def environment_key(env: dict) -> tuple:
    """What identifies a server's environment: every variable but those nothing reads at import time."""
    return tuple(sorted((k, v) for k, v in env.items() if k not in IGNORED))


class ForkServer:
    """A server imported with one environment; helpers.run_cli keeps one per environment in each pytest worker (the
    tests of a worker run one at a time, so a server runs one child at a time)."""

    def __init__(self, env: dict):
        self.env = dict(env)
        self.process: subprocess.Popen | None = None
        self.usable = True
        self.children = 0  # calls answered by a forked child

    def start(self) -> bool:
        """Started and able to fork children like a fresh process (else the caller runs a real subprocess)."""
        if self.usable and (self.process is None or self.process.poll() is not None):
            self._start()
        return self.usable

    def _start(self) -> None:
        self.process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve"], env=self.env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None)
        ready = json.loads(self.process.stdout.readline() or b"{}")
        if ready.get("ready") is not True:
            self.close()
            raise RuntimeError("the test fork server did not start; LLM_PG_TEST_FORKSERVER=0 runs real subprocesses")
        if ready["unlike_fresh"]:  # a child would not be a fresh process: real subprocesses, with a warning why
            self.close()
            self.usable = False
            warnings.warn(f"the test fork server is off: {'; '.join(ready['unlike_fresh'])}")

    def _answer(self, deadline: float) -> dict:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([self.process.stdout], [], [], left)[0]:
            raise TimeoutError
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the test fork server died")
        return json.loads(line)

    def run(self, args, cwd, env: dict, timeout: float, tmp: Path) -> subprocess.CompletedProcess:
        """`python -m llm_pg ARGS` in a forked child, as subprocess.run(capture_output=True, text=True) returns it."""
        out, err = tmp / "stdout", tmp / "stderr"
        out.write_bytes(b"")
        err.write_bytes(b"")
        request = {"args": [str(a) for a in args], "cwd": str(Path(cwd).resolve()), "env": env,
                   "stdout": str(out), "stderr": str(err)}
        command = [sys.executable, "-m", "llm_pg", *map(str, args)]
        deadline, pid = time.monotonic() + timeout, None
        try:
            self.process.stdin.write((json.dumps(request) + "\n").encode())
            self.process.stdin.flush()
            pid = self._answer(deadline)["pid"]
            returncode = self._answer(deadline)["returncode"]
        except BaseException as stop:  # a timeout, ^C, a dead server: no answer may be left unread for the next call
            if not (isinstance(stop, TimeoutError) and pid is not None and self._killed(pid)):
                self._abandon(pid)
            if isinstance(stop, TimeoutError):
                raise subprocess.TimeoutExpired(command, timeout, _text(out.read_bytes()),
                                                _text(err.read_bytes())) from None
            raise
        self.children += 1
        return subprocess.CompletedProcess(command, returncode, _text(out.read_bytes()), _text(err.read_bytes()))

    def _killed(self, pid: int) -> bool:
        """Kill a child that ran out of time; True once the server has reaped it and answered (it serves on)."""
        try:
            os.kill(pid, signal.SIGKILL)
            return "returncode" in self._answer(time.monotonic() + 30)
        except (OSError, TimeoutError, RuntimeError, ValueError):
            return False

    def _abandon(self, pid: int | None) -> None:
        """Kill the child and this server (the next call starts a fresh one), leaving no process behind."""
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:  # it ended at the deadline and the server has reaped it
                pass
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def close(self) -> None:
        """Stop the server: it ends when its stdin closes; killed if it does not within 10 s."""
        if self.process is not None:
            try:
                self.process.stdin.close()
                self.process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
            self.process = None


def _text(data: bytes) -> str:
    """What subprocess's text mode makes of captured bytes: the locale's encoding, universal newlines."""
    import locale

    text = data.decode(locale.getpreferredencoding(False))
    return text.replace("\r\n", "\n").replace("\r", "\n")


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    serve()
