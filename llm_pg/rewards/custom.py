"""User rewards: a Python callable named in the config, or a Hugging Face `evaluate` module scored per sample."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
from pathlib import Path

from llm_pg.data.chat import SOURCE_PROMPT_COLUMN, as_assistant_messages, is_conversation
from llm_pg.errors import ConfigError

logger = logging.getLogger(__name__)


def load_callable(spec: str, key: str):
    """'package.module:function' or 'path/to/file.py:function'; imported only because the config names it."""
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise ConfigError(f"{key}: write it as 'package.module:function' or 'path/to/file.py:function', got '{spec}'")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).expanduser().resolve()
            if not path.is_file():
                raise FileNotFoundError(f"no such file {path}")
            spec_ = importlib.util.spec_from_file_location(f"llm_pg_user_reward_{path.stem}", path)
            module = importlib.util.module_from_spec(spec_)
            spec_.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
        fn = getattr(module, attr)
    except Exception as e:  # any import-time failure of user code is reported the same way
        raise ConfigError(f"{key}: cannot import '{spec}' ({type(e).__name__}: {e})") from None
    if not callable(fn):
        raise ConfigError(f"{key}: '{spec}' is not callable")
    return fn


SIGNATURES = ("auto", "llm_pg", "trl")
# What TRL passes that llm_pg has no value for (the sampled token ids are not handed to rewards; there is no
# transformers TrainerState): a function that requires one is refused when it loads, not at the first step.
TRL_UNAVAILABLE = ("completion_ids", "trainer_state")


def _parameters(fn) -> list[inspect.Parameter]:
    try:
        return list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature
        return []


def detect_signature(fn) -> str:
    """'trl' when fn can only have been written for TRL, else 'llm_pg' (today's call).

    Unambiguous means: llm_pg's positional call fn(prompts, completions, references) cannot bind (e.g. TRL's
    `def reward_len(completions, **kwargs)` takes one positional argument), while TRL's keyword call can (fn has a
    `completions` parameter or **kwargs).  A function with a `references` parameter, or one both calls could bind, keeps
    today's llm_pg call; `signature: trl` on the component says otherwise.
    """
    parameters = _parameters(fn)
    names = {p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    if not parameters or "references" in names:
        return "llm_pg"
    try:
        inspect.signature(fn).bind_partial(None, None, None)
    except TypeError:  # too many positional arguments: today's call would fail on every batch
        takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in parameters)
        return "trl" if "completions" in names or takes_kwargs else "llm_pg"
    return "llm_pg"


def _looks_like_trl(fn) -> bool:
    """A `completions` parameter and **kwargs but no `references`: TRL's usual shape, though llm_pg's call binds."""
    parameters = _parameters(fn)
    names = {p.name for p in parameters}
    return "completions" in names and "references" not in names and any(p.kind is p.VAR_KEYWORD for p in parameters)


class FunctionReward:
    """A user function as a reward component, called the way it was written to be called.

    llm_pg:  fn(prompts, completions, references, **columns) -> list[float]; columns are passed only if fn takes
             them (a function with **kwargs gets every column of the records; one with named parameters those).
    trl:     fn(prompts=..., completions=..., **columns), TRL's GRPOTrainer / RLOOTrainer call: prompts as the
             records gave them (text before any template, or the conversation's messages), completions as text, or
             as [{"role": "assistant", "content": text}] when the prompt is a conversation; the reference field is
             not passed (TRL passes no `completion` column either).  A None in the result means "does not apply to
             this sample" (TRL's multi-task convention): it counts 0 in R = sum_c w_c v_c, exactly as TRL's nansum.
    """

    def __init__(self, function: str, per_token: bool = False, signature: str = "auto",
                 key: str = "reward.function"):
        self.fn = load_callable(function, f"{key}.function")
        self.style = detect_signature(self.fn) if signature == "auto" else signature
        if signature == "auto" and self.style == "llm_pg" and _looks_like_trl(self.fn):
            logger.info("%s: '%s' is called as fn(prompts, completions, references, **columns); if it was written "
                        "for TRL (keyword arguments), set signature: trl on the component", key, function)
        self.signature = f"function:{function}" + ("|signature:trl" if self.style == "trl" else "")
        parameters = _parameters(self.fn)
        self.all_columns = any(p.kind is p.VAR_KEYWORD for p in parameters)
        self.named = {p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
        if self.style == "trl":
            required = [p.name for p in parameters if p.name in TRL_UNAVAILABLE and p.default is p.empty]
            if required:
                raise ConfigError(f"{key}.function: '{function}' requires {required}, which llm_pg does not pass "
                                  "(it passes prompts, completions and the records' other fields); give the "
                                  "parameter a default or compute it from the completions")
        if per_token:  # prefixes are scored with the function itself, one call per completion
            self.prefix_scores = self._prefix_scores

    def __call__(self, prompts, completions, references, **columns) -> list[float]:
        sources = columns.pop(SOURCE_PROMPT_COLUMN, None)
        if self.style == "trl":
            return self._call_trl(prompts if sources is None else sources, completions, columns)
        passed = columns if self.all_columns else {k: v for k, v in columns.items() if k in self.named}
        return self.fn(prompts, completions, references, **passed)

    def _call_trl(self, prompts, completions, columns) -> list[float]:
        conversational = [is_conversation(p) for p in prompts]
        completions = [m if c else t for t, m, c in zip(completions, as_assistant_messages(completions),
                                                        conversational)]
        passed = {"prompts": list(prompts), "completions": completions, **columns}
        if not self.all_columns:
            passed = {k: v for k, v in passed.items() if k in self.named}
        values = self.fn(**passed)
        if values is None or isinstance(values, (str, bytes, dict)) or not hasattr(values, "__len__"):
            return values  # the reward model names the wrong return type
        return [0.0 if v is None else v for v in values]

    def _prefix_scores(self, prefixes, references, prompt: str = "", columns: dict | None = None) -> list[float]:
        """The function on every prefix of one completion, in one call (its prompt and columns repeated)."""
        n = len(prefixes)
        row = {k: [v] * n for k, v in (columns or {}).items()}
        return [float(v) for v in self([prompt] * n, list(prefixes), [list(references)] * n, **row)]


class EvaluateReward:
    """evaluate.load(module).compute() on each sample: the value of `key` (or the only key of the result).

    references=best scores the completion against each reference and keeps the best; references=all passes the
    list (for modules such as sacrebleu that take several references per prediction).
    """

    def __init__(self, module: str, key: str | None = None, references: str = "best", options: dict | None = None,
                 key_name: str = "reward.evaluate"):
        import evaluate

        try:
            self.module = evaluate.load(module)
        except Exception as e:  # evaluate raises many types for a missing module or an offline Hub
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"{key_name}.module: cannot load evaluate module '{module}': {first}") from None
        self.key, self.references, self.options = key, references, dict(options or {})
        self.key_name = key_name
        self.signature = f"evaluate:{module}|key:{key}|references:{references}"

    def _value(self, result: dict) -> float:
        if self.key is None:
            if len(result) != 1:
                raise ConfigError(f"{self.key_name}.key: compute() returned {sorted(result)}; choose one")
            return float(next(iter(result.values())))
        if self.key not in result:
            raise ConfigError(f"{self.key_name}.key: '{self.key}' is not in compute()'s result {sorted(result)}")
        return float(result[self.key])

    def __call__(self, prompts, completions, references, **columns) -> list[float]:
        values = []
        for c, refs in zip(completions, references):
            if self.references == "all":
                values.append(self._value(self.module.compute(predictions=[c], references=[list(refs)],
                                                              **self.options)))
            else:
                values.append(max(self._value(self.module.compute(predictions=[c], references=[r], **self.options))
                                  for r in refs))
        return values
