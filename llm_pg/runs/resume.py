"""`--resume` with a config: continue the same run, or refuse in one line (`llm-pg train|demo|rm`, the pipeline's
resumed stages, and the same functions called from Python).

The config a run started with is kept in <run>/config_history.jsonl (one line per start or resume: the time, the
step it started from, the whole config as given, the digest of its data and the settings a resume changed), so
`config.yaml` always describes the run that is going on and the history shows every config that ran. A resumed
config is compared with the last one by the rules of llm_pg/config/resume.py (which keys the command reads, and
which of them may change), and the content of its data with the digest the history holds: `check_resume` refuses
what cannot continue the run; `start_run`, called by `open_run` (runs/folder.py), checks and records every start.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from types import SimpleNamespace

import yaml

from llm_pg.config.aliases import read_old_names
from llm_pg.config.resume import RULES, ResumeConfigError, changed_keys, flatten
from llm_pg.config.schema import TrainConfig
from llm_pg.runs.digests import source_digest
from llm_pg.runs.marker import MARKER

logger = logging.getLogger(__name__)
HISTORY_FILE = "config_history.jsonl"


def _short(value) -> str:
    """A value as the error line shows it: a long text (a path) by its end, which tells two apart."""
    text = repr(value)
    if len(text) <= 40:
        return text
    return "'..." + text[-37:] if isinstance(value, str) else text[:37] + "..."


def _read_history(run_dir: Path) -> dict | None:
    """The last intact entry of config_history.jsonl (a torn last line from a kill: the one before it)."""
    history = run_dir / HISTORY_FILE
    if not history.is_file():
        return None
    for line in reversed(history.read_bytes().decode("utf-8", errors="replace").splitlines()):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("config"), dict):
            return entry
    return None


def saved_config(run_dir: Path) -> dict | None:
    """The config the run last ran with: the history's last entry, else config.yaml (runs from older versions)."""
    entry = _read_history(run_dir)
    if entry is not None:
        return entry["config"]
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    try:
        values = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError):
        values = None
    if not isinstance(values, dict):
        raise ResumeConfigError(f"--resume: {path} is damaged, so the resumed config cannot be checked against the "
                                "run's; restore it from a backup, or start a new run with --overwrite or another "
                                "training.output_dir")
    return values


def comparable(values: dict) -> dict:
    """A saved or new config as two runs' configs are compared: old key names read as their new ones (a config of
    an earlier version as it ran, config/aliases.py), and ppo.epochs / ppo.num_minibatches as the passes and
    minibatches the algorithm takes (null: its default; 1 where it reads no ppo: section), so that a run saved with
    `epochs: 2` and resumed with `epochs: null` under ppo is the same run."""
    from llm_pg.algorithms.registry import ALGORITHMS  # late: the registry (which holds the defaults) loads torch

    values = read_old_names(values, quiet=True)
    algorithm = values.get("algorithm") if isinstance(values.get("algorithm"), dict) else {}
    entry, ppo = ALGORITHMS.get(algorithm.get("name", "reinforce")), values.get("ppo")
    if entry is None or not isinstance(ppo, dict):
        return values
    as_run = SimpleNamespace(ppo=SimpleNamespace(**{"epochs": None, "num_minibatches": None, **ppo}))
    return {**values, "ppo": {**ppo, "epochs": entry.epochs(as_run), "num_minibatches": entry.minibatches(as_run)}}


def _as_read(flat: dict, kind: str) -> dict:
    """The keys of a flattened config that `kind` reads (rm: its base as one value, rm.base)."""
    rules = RULES[kind]
    if kind == "rm":
        flat = {**flat, "rm.base": flat.get("rm.base_model") or flat.get("model.name_or_path")}
        flat.pop("rm.base_model", None)
    return {k: v for k, v in flat.items() if not k.startswith(rules.ignores) and (
        rules.reads is None or any(k == r or (r.endswith(".") and k.startswith(r)) for r in rules.reads))}


def _roots(old: dict, new: dict, run_dir: Path, field: str) -> tuple[str, str]:
    """Where the run was and is: its folder, or for a sub-run (a pipeline stage, or a candidate of the rl stage in
    rl/candidates/<name>) the folder of the run around it, which the stage's other paths (its data, its starting
    model, its reward models) lie in."""
    before, now = (str(flatten(values).get(field) or "") for values in (old, new))
    up = next((i for i, parent in enumerate(Path(run_dir).parents) if (parent / MARKER).exists()), None)
    if up is not None:
        before, now = (str(Path(p).parents[up]) if p else "" for p in (before, now))
    return before, now


def _relocated(values, root: str):
    """`values` with the paths under `root` written as '<run>/...', so a run folder (or pipeline) that was moved or
    copied compares equal to itself."""
    if isinstance(values, dict):
        return {k: _relocated(v, root) for k, v in values.items()}
    if isinstance(values, list):
        return [_relocated(v, root) for v in values]
    root = root.rstrip("/")
    if root and isinstance(values, str) and (values.rstrip("/") == root or values.startswith(root + "/")):
        return "<run>" + values[len(root):]
    return values


def input_digests(config: TrainConfig, kind: str) -> dict[str, str | None]:
    """{source key: digest of its content} (llm_pg/runs/digests.py); None for a source that is not a local path."""
    key = RULES[kind].source
    section, name = key.split(".")
    source = getattr(getattr(config, section), name)
    return {key: None if source == "demo" else source_digest(source)}


def check_resume(config: TrainConfig, run_dir: Path, checkpoint_step: int, kind: str = "train",
                 inputs: dict | None = None) -> dict[str, tuple]:
    """Refuse changes that cannot continue the run (settings, and the data's content when `inputs` are given);
    return (and log) every change, of which the ones that the command reads then apply."""
    rules = RULES[kind]
    old = saved_config(run_dir)
    if old is None:
        return {}
    old, new = comparable(old), comparable(config.to_dict())
    old, new = (_relocated(values, root) for values, root in zip((old, new), _roots(old, new, run_dir, rules.field)))
    changes = changed_keys(old, new)
    read = changed_keys(_as_read(flatten(old), kind), _as_read(flatten(new), kind))
    schedule = flatten(new).get(rules.schedule)
    unsafe = {k: v for k, v in read.items()
              if k not in rules.safe or (k == rules.max_steps and schedule != "constant")}
    saved_inputs = (_read_history(run_dir) or {}).get("inputs") or {}
    for key, digest in (inputs or {}).items():
        if key not in unsafe and saved_inputs.get(key) and digest and saved_inputs[key] != digest:
            unsafe[f"{key} content"] = (f"sha256 {saved_inputs[key][:12]}", f"sha256 {digest[:12]}")
    if unsafe:
        listed = ", ".join(f"{k} ({_short(a)} -> {_short(b)})" for k, (a, b) in unsafe.items())
        raise ResumeConfigError(f"--resume: these settings differ from the run in {run_dir} and cannot continue it: "
                                f"{listed}; resume with the run's own settings and data ({run_dir / 'config.yaml'}), "
                                f"or start a new run with --overwrite or another {rules.field}", unsafe)
    max_steps = flatten(new).get(rules.max_steps)
    if max_steps and max_steps < checkpoint_step:
        raise ResumeConfigError(f"{rules.max_steps}: {max_steps} is below the step the run is resumed from "
                                f"({checkpoint_step}); set {rules.max_steps} >= {checkpoint_step}")
    for key, (a, b) in read.items():
        logger.info("--resume: %s changed from %s to %s", key, _short(a), _short(b))
    return changes


def checkpoint_step(run_dir: Path) -> int | None:
    """The step of the newest intact checkpoint in the folder (None: there is none)."""
    from llm_pg.runs.checkpoint import STATE_FILE, latest_checkpoint

    checkpoint = latest_checkpoint(run_dir)
    return None if checkpoint is None else json.loads((checkpoint / STATE_FILE).read_text())["step"]


def start_run(config: TrainConfig, run_dir: Path, kind: str, resume: bool) -> dict[str, tuple]:
    """What `open_run` does for `train` and `rm` once it holds the folder: check a resume (when there is a
    checkpoint to continue) and record this start; the changes that apply."""
    step = checkpoint_step(run_dir) if resume else None
    damaged = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*")) if step is None else []
    if resume and damaged:  # starting over would replace the run's log and final/ with a new run's
        raise ResumeConfigError(f"--resume: no intact checkpoint in {run_dir / 'checkpoints'} ({', '.join(damaged)} "
                                "damaged: the warnings above say what is missing); restore one, or start over with "
                                "--overwrite")
    inputs = input_digests(config, kind)
    changes = check_resume(config, run_dir, step, kind, inputs) if step is not None else {}
    record_start(config, run_dir, step or 0, inputs, {k: v for k, v in changes.items()
                                                      if k in _as_read(flatten(config.to_dict()), kind)})
    return changes


def record_start(config: TrainConfig, run_dir: Path, start_step: int, inputs: dict | None = None,
                 changed: dict | None = None) -> None:
    """Append this start's config to the history (before training, so a run that dies is listed too): with the
    digests of its data and, on a resume, the settings it changed ({key: [old, new]})."""
    entry = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "start_step": start_step,
             "config": config.to_dict(), "inputs": inputs or {}, "changed": changed or {}}
    path = run_dir / HISTORY_FILE
    torn = path.is_file() and path.stat().st_size and not path.read_bytes().endswith(b"\n")
    with open(path, "a", encoding="utf-8") as f:
        # after a torn line, on a line of its own
        f.write(("\n" if torn else "") + json.dumps(entry, default=str) + "\n")
