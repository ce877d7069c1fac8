"""The reward model: a one-output AutoModelForSequenceClassification, its score of a text, and its saved folder.

A causal LM gets a linear score head (transformers names it `score`) read at the last real token; an encoder
(BERT, MiniLM) keeps its own pooling (the [CLS] state through `classifier`). The last real token is found from
the attention mask, never from the pad id, so the score is the same with left or right padding and when the pad
token is the EOS token (transformers' own pooling looks for the last token that is not the pad id: with pad ==
eos and an answer ending in EOS it reads the token before). Position ids count real tokens only, so left padding
does not shift them. Shapes: N texts, L tokens, H hidden size.

The saved folder (written by `llm-pg rm`: training/reward_model.py save_reward_model): the weights (safetensors;
LoRA adapters merged), the tokenizer, and rm_settings.json with the rendering (how a conversation becomes text),
max_length and the normalization statistics (mean, std of the scores of the training pairs' answers), which
`type: reward_model` reads (`read_settings`).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch

from llm_pg.config.schema import ModelConfig
from llm_pg.errors import ModelLoadError
from llm_pg.models.calls import positions
from llm_pg.models.policy import DTYPES, resolve_model_path

logger = logging.getLogger(__name__)
SETTINGS_FILE = "rm_settings.json"


def resolve_base(name: str) -> tuple[str, str | None]:
    """(folder or Hub id, gguf file or None): a 'pypi:' package holding a .gguf (SmolLM2) or a model folder (MiniLM)."""
    if name.startswith("pypi:"):
        try:
            return resolve_model_path(ModelConfig(name_or_path=name))
        except ModelLoadError:
            from llm_pg.models.locate import resolve_model_folder

            return resolve_model_folder(name, "rm.base_model"), None
    return resolve_model_path(ModelConfig(name_or_path=name))


def load_tokenizer(path: str, gguf: str | None = None, key: str = "rm.base_model"):
    """The tokenizer, padding on the right and truncating on the left (a long dialogue keeps its last turns and
    the answer); pad = eos when it has no pad token (safe: the score reads the mask, not the pad id)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=gguf)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{key}: cannot load a tokenizer from '{path}': {str(e).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side, tokenizer.truncation_side = "right", "left"
    return tokenizer


def load_model(path: str, gguf: str | None, pad_token_id: int, dtype: str = "float32", key: str = "rm.base_model"):
    """AutoModelForSequenceClassification with num_labels=1 (a fresh head on a base model, or a saved reward model)."""
    from transformers import AutoModelForSequenceClassification

    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path, gguf_file=gguf, num_labels=1, dtype=DTYPES[dtype], output_loading_info=True)
    except Exception as e:  # a missing folder, an architecture without a sequence-classification head, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"{key}: cannot load '{path}' as a one-output sequence classifier: {first}") from None
    _restore_tied_embeddings(model, path, info.get("missing_keys", []) if gguf is None else [], key)
    if getattr(model, "hf_quantizer", None) is not None:  # GGUF weights are dequantized already; let it save
        model.hf_quantizer, model.is_quantized = None, False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    model.config.pad_token_id = pad_token_id
    return model


def _restore_tied_embeddings(model, path: str, missing: list[str], key: str) -> None:
    """A causal LM with tied embeddings may store them once, as lm_head.weight (tinystories-656k does); the
    classifier has no LM head, so transformers would start the input embeddings from random values."""
    head_keys = ("score.", "classifier.", "pooler.")  # new in a classifier made from a base model
    missing = [k for k in missing if not k.startswith(head_keys)]
    embedding = model.get_input_embeddings()
    if missing and getattr(model.config, "tie_word_embeddings", False):
        from safetensors import safe_open

        for file in sorted(Path(path).glob("*.safetensors")):
            with safe_open(str(file), "pt") as f:
                if "lm_head.weight" in f.keys():
                    embedding.weight.data.copy_(f.get_tensor("lm_head.weight"))
                    missing = [k for k in missing if not k.endswith(("embed_tokens.weight", "wte.weight"))]
    if missing:
        raise ModelLoadError(f"{key}: '{path}' lacks {len(missing)} weight(s) of its {type(model).__name__} (e.g. "
                             f"{sorted(missing)[0]}); the weights file is incomplete or belongs to another model")


def _inner(model):
    """The transformers model under a DDP and/or peft wrapper (peft's adapters stay active inside it)."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def reads_last_token(model) -> bool:
    """Decoder heads (`score`) pool the last token; encoder heads (`classifier`) pool [CLS] themselves."""
    return hasattr(_inner(model), "score")


def sequence_scores(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N,) float32 score r(x) of each text.  ids, mask: (N, L), padded on either side."""
    if not reads_last_token(model):
        return model(input_ids=ids, attention_mask=mask).logits[:, 0].float()
    inner = _inner(model)
    backbone = getattr(inner, inner.base_model_prefix)
    hidden = backbone(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).last_hidden_state  # (N, L, H)
    last = (mask * torch.arange(mask.shape[1], device=mask.device)).argmax(-1)  # (N,) the last real token
    return inner.score(hidden[torch.arange(len(ids), device=ids.device), last])[:, 0].float()  # (N,)


class Scorer(torch.nn.Module):
    """sequence_scores as one module: under DDP the whole computation runs through the wrapper's forward, which
    is what makes the backward pass synchronize gradients (calling the inner model directly would bypass it).

    With `length_covariate` (rm.length_covariate) it also holds beta and, given each text's answer length L (in
    LENGTH_UNIT characters), returns r = q + beta L: trained as a Bradley-Terry model with length as a covariate,
    so a linear preference for length goes into beta rather than into q (in the spirit of ODIN, Chen et al. 2024).
    Only q, the model, is saved: the reward model scores without the length term."""

    def __init__(self, model, length_covariate: bool = False):
        super().__init__()
        self.model = model
        self.length_beta = torch.nn.Parameter(torch.zeros(())) if length_covariate else None

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        q = sequence_scores(self.model, ids, mask)  # (N,)
        if self.length_beta is None or lengths is None:
            return q
        return q + self.length_beta * lengths  # (N,) r = q + beta L


LENGTH_UNIT = 100  # characters: beta is the score per 100 characters of answer


def encode(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids of each text with the tokenizer's special tokens, cut from the left to max_length."""
    return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]


def pad_right(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), both (N, L), right-padded."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, :len(s)], mask[i, :len(s)] = torch.tensor(s, dtype=torch.long), 1
    return ids, mask


@torch.no_grad()
def score_ids(model, sequences: list[list[int]], pad_id: int, batch_size: int, device) -> list[float]:
    """Scores of token sequences in batches of similar length (less padding), returned in the input order."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    values = [0.0] * len(sequences)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        ids, mask = pad_right([sequences[i] for i in chunk], pad_id)
        for i, v in zip(chunk, sequence_scores(model, ids.to(device), mask.to(device)).tolist()):
            values[i] = v
    return values


def read_settings(folder: str | Path, key: str) -> dict:
    """rm_settings.json of a folder written by `llm-pg rm`, or a one-line error saying what the folder is not."""
    from llm_pg.errors import ConfigError

    path = Path(folder) / SETTINGS_FILE
    if not path.is_file():
        raise ConfigError(f"{key}: '{folder}' has no {SETTINGS_FILE}, so it is not a reward model written by `llm-pg "
                          "rm` (give its <rm.output_dir>/final; for another classifier use type: classifier)")
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
        problem = _settings_problem(settings)
    except (OSError, ValueError) as e:
        problem = f"not valid JSON: {type(e).__name__}"
    if problem:
        raise ConfigError(f"{key}: {path} is damaged ({problem}); train the reward model again with `llm-pg rm` "
                          "(its <rm.output_dir>/final), or restore the file")
    return settings


def _settings_problem(settings) -> str | None:
    """What is wrong with the content of an rm_settings.json (None when it has what a reward component reads)."""
    if not isinstance(settings, dict):
        return f"a JSON {type(settings).__name__}, not an object"
    rendering, stats = settings.get("rendering"), settings.get("normalization")
    if not isinstance(rendering, dict) or not isinstance(rendering.get("use_chat_template"), bool) or \
            not isinstance(rendering.get("system_prompt"), (str, type(None))) or set(rendering) - {
                "use_chat_template", "system_prompt"}:
        return "'rendering' must be {use_chat_template: true/false, system_prompt: text or null}"
    if not isinstance(settings.get("max_length"), int) or isinstance(settings["max_length"], bool) or \
            settings["max_length"] < 1:
        return "'max_length' must be a positive integer"
    if not isinstance(stats, dict) or not all(isinstance(stats.get(k), (int, float)) and
                                              not isinstance(stats.get(k), bool) and math.isfinite(stats[k])
                                              for k in ("mean", "std")):
        return "'normalization' must hold finite numbers 'mean' and 'std'"
    return None
