"""Checkpoints: written to a temporary folder and renamed into place, so 'latest' is never half-written.

A checkpoint holds the policy (or its LoRA adapter) and tokenizer (safetensors), optimizer, scheduler, RNG states
and the trainer's own state (step, data position, baseline). Everything is read back with
torch.load(weights_only=True). Under DeepSpeed or FSDP each process holds a shard of the optimizer state:
then `sharded_state/` (written by accelerator.save_state on every process, read back by
accelerator.load_state) replaces optimizer.pt.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import torch

from llm_pg.errors import LlmPgError
from llm_pg.models.value_head import VALUE_HEAD_FILE, save_value_head, value_head_of
from llm_pg.runs.marker import MARKER, read_marker
from llm_pg.runs.rng import checkpoint_rng, restore_rng, rng_state

logger = logging.getLogger(__name__)
STATE_FILE = "trainer_state.json"
MANIFEST = "manifest.json"  # written last: every other file's size and sha256, checked before a resume uses it
SHARDED_STATE = "sharded_state"  # DeepSpeed/FSDP: every process's optimizer shard, in the backend's own format


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:06d}"


def save_model(model, tokenizer, path: str | Path, state_dict: dict | None = None,
               extra_files: dict[str, str] | None = None) -> Path:
    """Policy (safetensors), its value head when it has one, tokenizer and `extra_files` ({name: text}: what the
    folder says about itself), written to a temporary folder and renamed into place, so `path` is either the
    previous model or the complete new one.  `state_dict`: the whole weights when the model's own are sharded
    (distributed.full_state_dict)."""
    path = Path(path)
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    with explain_write_errors(tmp):
        _write_model(model, tokenizer, tmp, state_dict)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path


def _write_model(model, tokenizer, folder: Path, state_dict: dict | None = None) -> None:
    # a LoRA policy writes its adapter alone; save_pretrained deletes the value head's keys from the dict it is
    # given: it gets a copy
    from llm_pg.models.lora import save_weights  # late, as below: finding a checkpoint loads no model code

    save_weights(model, folder, None if state_dict is None else dict(state_dict))
    save_value_head(model, folder, state_dict)
    tokenizer.save_pretrained(folder)


def load_saved_weights(model, folder: str | Path) -> None:
    """Copy the weights that save_model wrote into `folder` back into the live `model`, in place, so that its
    optimizer, KL reference and Accelerate wrappers stay as they are: the policy (or its LoRA adapter) and the value
    head.  Only the tied output embedding may be absent from the file (save_pretrained drops it)."""
    from safetensors.torch import load_file

    from llm_pg.models.lora import is_lora

    folder, policy = Path(folder), getattr(model, "module", model)
    if is_lora(policy):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(policy, load_file(folder / "adapter_model.safetensors"))
        unexpected = list(result.unexpected_keys)
        missing = []
    else:
        state = {}
        for file in sorted(folder.glob("model*.safetensors")):  # one file, or the shards of a large model
            state.update(load_file(file))
        missing, unexpected = policy.load_state_dict(state, strict=False)
        tied = {"lm_head.weight"} if policy.config.tie_word_embeddings else set()
        missing = [k for k in missing if k not in tied and not k.startswith("value_head.")]
    if missing or unexpected:
        raise LlmPgError(f"{folder}: its weights do not fit the policy (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]})")
    head = value_head_of(policy)
    if head is not None:
        head.load_state_dict(load_file(folder / VALUE_HEAD_FILE))


def save_checkpoint(run_dir: str | Path, step: int, model, tokenizer, optimizer, scheduler,
                    trainer_state: dict, keep: int = 2, state_dict: dict | None = None,
                    sharded_state: Path | None = None, rng_states: list[dict] | None = None) -> Path:
    """`state_dict`: the whole weights when the model's are sharded; `sharded_state`: a finished
    accelerator.save_state folder (DeepSpeed/FSDP), moved in instead of optimizer.pt; `rng_states`: every
    process's random state (runs/rng.py all_rng_states), else this process's alone."""
    final = checkpoint_dir(run_dir, step)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    with explain_write_errors(tmp):
        tmp.mkdir(parents=True)
        _write_model(model, tokenizer, tmp / "model", state_dict)
        if sharded_state is None:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        else:
            os.replace(sharded_state, tmp / SHARDED_STATE)
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(checkpoint_rng(rng_states or [rng_state()]), tmp / "rng.pt")
        (tmp / STATE_FILE).write_text(json.dumps({**trainer_state, "step": step}, indent=2))
        write_manifest(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(final.parent.glob("step-*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


class CheckpointWriteError(LlmPgError, OSError):
    """Writing a checkpoint or model failed: a full disk, a quota, a file size limit, a vanished folder."""


def _free_bytes(folder: Path) -> float:
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            return shutil.disk_usage(candidate).free
    return float("inf")


def _free_space(folder: Path) -> str:
    free = _free_bytes(folder)
    return "free space unknown" if free == float("inf") else f"{free / 2**20:.0f} MiB free"


# What torch's zip writer (caffe2/serialize/inline_container.cc) says when a write comes up short: a full disk
# shows as "unexpected pos N vs M" (the file position after a short write), with no errno.
TORCH_WRITE_FAILURES = ("unexpected pos", "PytorchStreamWriter", "inline_container")


def _section(folder: Path) -> str:
    """The config section of the run a save writes into (rm.output_dir for `llm-pg rm`, ...), from its kind marker."""
    for candidate in (folder, *folder.parents):
        marker = read_marker(candidate) if (candidate / MARKER).exists() else None
        if marker is not None:
            return {"train": "training", "sft": "sft", "rm": "rm", "dpo": "dpo"}.get(marker["kind"], "training")
    return "training"


def _is_write_failure(e: Exception) -> bool:
    text = str(e)
    return isinstance(e, OSError) or any(word in text for word in ("writ", "I/O error", "os error", "serializ",
                                                                   *TORCH_WRITE_FAILURES))


@contextlib.contextmanager
def explain_write_errors(tmp: Path):
    """A failed write (torch reports a full disk as a RuntimeError without errno) as one line naming the folder
    and its free space; the half-written `tmp` stays (nothing reads .tmp- folders) and the next start deletes it."""
    try:
        yield
    except Exception as e:  # OSError; torch's RuntimeError and safetensors' SafetensorError carry no errno
        if isinstance(e, LlmPgError) or not _is_write_failure(e):
            raise
        text = str(e)
        first = text.strip().splitlines()[-1].strip() if text.strip() else type(e).__name__
        full = any(word in text for word in TORCH_WRITE_FAILURES) and _free_bytes(tmp) < 2**20
        no_space = getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "os error 28)" in text or full
        cause = "no space left on the device" if no_space else first
        section = _section(tmp)
        hint = (", then run it again" if section in ("sft", "dpo") else  # no checkpoints, no --resume
                f" or lower {section}.keep_checkpoints, then continue with --resume")
        raise CheckpointWriteError(f"{section}.output_dir: writing {tmp} failed ({cause}; {_free_space(tmp)} there); "
                                   f"free some space{hint}") from e


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path) -> None:
    """Size and sha256 of every file in the folder, so a truncated or damaged file is noticed before it is used."""
    files = {str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps({"files": files}, indent=1))


def damage(path: Path) -> str | None:
    """What is wrong with a checkpoint folder (None when it is intact)."""
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError):
        return f"{STATE_FILE} is missing or not valid JSON"
    if not isinstance(state, dict) or not {"step", "sampler", "moving_average"} <= set(state):
        return f"{STATE_FILE} lacks the step, sampler or baseline state"
    if (path / MANIFEST).is_file():
        try:
            files = json.loads((path / MANIFEST).read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return f"{MANIFEST} is not valid"
        for name, expected in files.items():
            file = path / name
            if not file.is_file() or file.stat().st_size != expected["size"] or _sha256(file) != expected["sha256"]:
                return f"{name} is missing, truncated or changed (its size or sha256 differs from {MANIFEST})"
    # checkpoints written before manifests existed: the files must at least be there
    optimizer = (path / "optimizer.pt").exists() or (path / SHARDED_STATE).is_dir()
    if not (optimizer and all((path / name).exists() for name in ("model", "scheduler.pt", "rng.pt"))):
        return "model/, optimizer.pt, scheduler.pt or rng.pt is missing"
    return None


def is_complete(path: Path) -> bool:
    return damage(path) is None


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint; damaged or half-written ones are skipped with a warning."""
    for path in sorted((Path(run_dir) / "checkpoints").glob("step-*"), reverse=True):
        problem = damage(path)
        if problem is None:
            return path
        logger.warning("checkpoint %s is incomplete or damaged; skipping it (%s)", path, problem)
    return None


def load_checkpoint(path: Path, optimizer, scheduler, accelerator=None, seed: int = 0) -> dict:
    """Restore optimizer, scheduler and RNG states (the model is loaded from path/'model' by the caller); each
    process gets its own random state back (`seed` makes fresh streams where the checkpoint has none: runs/rng.py).

    A checkpoint of a DeepSpeed/FSDP run: every process calls this, and accelerator.load_state reads its shard
    (it needs the same Accelerate config and number of processes as the run that saved it)."""
    if (path / SHARDED_STATE).is_dir():
        if accelerator is None:
            raise ValueError(f"{path} holds sharded optimizer state: load it with the run's accelerator")
        accelerator.load_state(str(path / SHARDED_STATE))
    else:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    processes = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    restore_rng(torch.load(path / "rng.pt", weights_only=True), *processes, seed)
    return json.loads((path / STATE_FILE).read_text())
