"""The run folder's kind marker (.llm_pg_run.json): which command's run a folder holds (train, sft, rm, dpo or rlhf).

`open_run_folder` (runs/folder.py) writes it when it takes a folder; the checks that a folder holds no other run, and
the write errors that name a run's config section (runs/checkpoint.py), read it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

logger = logging.getLogger(__name__)
MARKER = ".llm_pg_run.json"  # {"kind", "command", "created", "llm_pg"}: which command's run the folder holds
KINDS = {"train": "an `llm-pg train` run", "sft": "an `llm-pg sft` model", "rm": "an `llm-pg rm` reward-model run",
         "dpo": "an `llm-pg dpo` policy", "rlhf": "an `llm-pg rlhf` pipeline"}


def read_marker(folder: Path) -> dict | None:
    """The folder's kind marker; None when it has none, or (with a warning) when the marker is damaged."""
    path = Path(folder) / MARKER
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        marker = None
    if isinstance(marker, dict) and marker.get("kind") in KINDS:
        return marker
    logger.warning("%s is damaged; the kind of the run in %s is read from its files", path, folder)
    return None


def write_marker(folder: Path, kind: str, command: str) -> None:
    from llm_pg import __version__

    marker = {"kind": kind, "command": command, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "llm_pg": __version__}
    tmp = folder / f"{MARKER}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(marker) + "\n", encoding="utf-8")
    os.replace(tmp, folder / MARKER)
