"""Content digests of what a run reads and writes: what `--resume` and the pipeline's DONE markers compare.

A file's digest is the sha256 of its bytes. A folder's manifest maps every file under it (its path relative to a
root) to that file's digest; hidden files (locks, run markers) and the pipeline's DONE markers are left out, since
they say nothing about the content. A source that is not a local path (a Hub dataset id, the packaged `demo`
data) has no digest: it is named by its id alone, as a base model is (a model folder is never hashed: a run
names it by its path, and the pipeline hashes the models it trains itself).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

LEFT_OUT = ("DONE",)  # the pipeline's stage markers: written after the content they describe


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return [p for p in sorted(path.rglob("*")) if p.is_file() and p.name not in LEFT_OUT
            and not any(part.startswith(".") for part in p.relative_to(path).parts)]


def manifest(root: Path, names: tuple[str, ...]) -> dict[str, str]:
    """{path relative to root: sha256} of every file under root/<name> for each name (absent names: nothing)."""
    return {str(p.relative_to(root)): file_sha256(p) for name in names if (root / name).exists()
            for p in _files(root / name)}


def combined(files: dict[str, str]) -> str:
    """One digest of a manifest (names and contents)."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def source_digest(source: str) -> str | None:
    """The digest of a data source: a local file, or a folder (all of its files); None when it is not local."""
    path = Path(source).expanduser()
    if not source or not path.exists():
        return None
    if path.is_file():
        return file_sha256(path)
    return combined({str(p.relative_to(path)): file_sha256(p) for p in _files(path)})
