"""The demo task, built at run time from the running Python's standard library.

Each example is one documented function: the prompt is its source with the docstring removed, the reference is
the docstring's first sentence. Nothing from the standard library is committed; the rows are cached after the
first build. Examples are split into train/validation/test by *source file* (a stable hash of the file's path),
so no module leaks between splits.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import sys
import sysconfig
from pathlib import Path

SPLITS = ("train", "validation", "test")
# Directories of the stdlib that are tests, tools or vendored code, not library functions.
_SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "ensurepip",
              "turtledemo", "tkinter", "pydoc_data", "__pycache__", "msilib", "venv"}
MAX_SOURCE_LINES = 12  # long bodies make long prompts, and prompt length sets the cost of a step
MIN_WORDS, MAX_WORDS = 3, 16
CACHE_VERSION = 3


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "llm_pg"


def split_of(relative_path: str) -> str:
    """80/10/10 train/validation/test, decided by the md5 of the file's path (stable across machines)."""
    bucket = int(hashlib.md5(relative_path.encode()).hexdigest(), 16) % 10
    return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


def first_sentence(docstring: str) -> str | None:
    """The docstring's first sentence, on one line, or None when it is not a usable summary."""
    paragraph = docstring.strip().split("\n\n")[0]
    text = " ".join(line.strip() for line in paragraph.splitlines())
    match = re.match(r"(.+?[.!?])(\s|$)", text)
    sentence = match.group(1) if match else text
    words = sentence.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS or not sentence[0].isalpha() or \
            sum(any(c.isalpha() for c in w) for w in words) < MIN_WORDS:
        return None
    if any(mark in sentence for mark in (">>>", "::", "`", "%(", "{", "->", " -- ")):
        return None
    if re.match(r"^[\w.]+\(", sentence):  # a C-style signature line ("D.pop(k[,d]) ..."), not a summary
        return None
    return sentence


def function_examples(source: str, relative_path: str) -> list[dict]:
    """One row per documented top-level function or method whose undocumented source is short."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    rows = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name.startswith("__"):
            continue
        docstring = ast.get_docstring(node)
        summary = first_sentence(docstring) if docstring else None
        if summary is None:
            continue
        body = node.body[1:] or [ast.Pass()]
        stripped = type(node)(**{**{f: getattr(node, f) for f in node._fields}, "body": body})
        stripped.decorator_list = []
        code = ast.unparse(ast.fix_missing_locations(stripped))
        if len(code.splitlines()) > MAX_SOURCE_LINES or len(code) > 600:
            continue
        rows.append({"id": f"{relative_path}:{node.lineno}:{node.name}", "code": code, "summary": summary,
                     "split": split_of(relative_path)})
    return rows


def build_rows(stdlib_dir: str | None = None) -> list[dict]:
    """Every usable function of the standard library, in a deterministic order."""
    root = Path(stdlib_dir or sysconfig.get_paths()["stdlib"])
    rows = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if _SKIP_DIRS.intersection(relative.split("/")[:-1]) or path.name.startswith("test_"):
            continue
        try:
            source = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        rows.extend(function_examples(source, relative))
    return rows


def load_split(split: str, cache_dir: str | Path | None = None) -> list[dict]:
    """Rows `{"id", "code", "summary", "split"}` of one split, building and caching the set on first use."""
    if split not in SPLITS:
        raise ValueError(f"data.{split}: the demo dataset has splits {SPLITS}")
    version = f"py{sys.version_info.major}.{sys.version_info.minor}-v{CACHE_VERSION}"
    cache = Path(cache_dir or default_cache_dir()) / f"stdlib_docstrings-{version}.jsonl"
    if not cache.exists():
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            for row in build_rows():
                f.write(json.dumps(row) + "\n")
        os.replace(tmp, cache)  # atomic: a half-written cache is never read
    with open(cache, encoding="utf-8") as f:
        return [row for row in map(json.loads, f) if row["split"] == split]
