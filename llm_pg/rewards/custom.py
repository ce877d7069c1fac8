"""User rewards: a Python callable named in the config, or a Hugging Face `evaluate` module scored per sample."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
from pathlib import Path

from llm_pg.data.chat import SOURCE_PROMPT_COLUMN, SOURCE_REFERENCE_PREFIX, as_assistant_messages, is_conversation
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
TRL_ARGUMENTS = ("prompts", "completions", *TRL_UNAVAILABLE)  # the names TRL's call always passes


def _parameters(fn) -> list[inspect.Parameter]:
    try:
        return list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature
        return []


def _third_positional(parameters: list[inspect.Parameter]) -> str | None:
    """The parameter llm_pg's positional call fn(prompts, completions, references) hands the references to."""
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    if len(positional) < 3 and not any(p.kind is p.VAR_POSITIONAL for p in positional):
        return None
    return positional[min(2, len(positional) - 1)].name


def detect_signature(fn) -> str:
    """'trl', 'llm_pg', or 'ambiguous' (both calls could be meant: refused unless the component says which).

    * a `references` parameter, or no parameters: 'llm_pg' (today's call);
    * llm_pg's positional call fn(prompts, completions, references) cannot bind (e.g. TRL's
      `def reward_len(completions, **kwargs)`): 'trl' when TRL's keyword call can (a `completions` parameter or
      **kwargs), else 'llm_pg' (its error stays);
    * it binds: the references would land in the third parameter.  Named like an argument TRL passes
      (`fn(prompts, completions, completion_ids, **kwargs)`): 'trl'.  Otherwise, when the function has TRL's shape
      (a `completions` parameter and **kwargs, e.g. `fn(prompts, completions, solution, **kwargs)`): 'ambiguous',
      since that parameter may be a dataset column TRL would pass by name.  Else 'llm_pg' (`fn(p, c, r)`).
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
    if _third_positional(parameters) in TRL_ARGUMENTS:
        return "trl"
    return "ambiguous" if _looks_like_trl(fn) else "llm_pg"


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
             as [{"role": "assistant", "content": text}] when the prompt is a conversation; the reference field
             under its own name (`solution=[...]`, as the records hold it), except TRL's `completion` column, which
             TRL does not pass either.  A None in the result means "does not apply to this sample" (TRL's
             multi-task convention): it counts 0 in R = sum_c w_c v_c and is left out of the logged mean of
             reward/<name>, as TRL's nansum and nanmean.
    A function that fits both calls with different meanings is refused (detect_signature: 'ambiguous').
    """

    def __init__(self, function: str, per_token: bool = False, signature: str = "auto",
                 key: str = "reward.function"):
        self.fn = load_callable(function, f"{key}.function")
        self.style = detect_signature(self.fn) if signature == "auto" else signature
        if self.style == "ambiguous":
            third = _third_positional(_parameters(self.fn))
            raise ConfigError(f"{key}.function: '{function}' fits both calls: llm_pg's fn(prompts, completions, "
                              f"references, ...) would pass the references as its '{third}', TRL's keyword call "
                              f"the record's '{third}' field; set signature: trl (TRL's call) or signature: llm_pg on "
                              "the component")
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

    # a None in a TRL function's result: "does not apply to this sample" (RewardMix gives it 0 in R and leaves it
    # out of the component's logged mean, as TRL's nansum / nanmean)
    @property
    def none_means_not_applicable(self) -> bool:
        return self.style == "trl"

    def __call__(self, prompts, completions, references, **columns) -> list[float]:
        sources = columns.pop(SOURCE_PROMPT_COLUMN, None)
        reference_columns = {k[len(SOURCE_REFERENCE_PREFIX):]: columns.pop(k) for k in list(columns)
                             if k.startswith(SOURCE_REFERENCE_PREFIX)}
        if self.style == "trl":  # TRL passes every dataset column but the prompt and its `completion` (the reference)
            reference_columns.pop("completion", None)
            return self._call_trl(prompts if sources is None else sources, completions,
                                  {**reference_columns, **columns})
        passed = columns if self.all_columns else {k: v for k, v in columns.items() if k in self.named}
        return self.fn(prompts, completions, references, **passed)

    def _call_trl(self, prompts, completions, columns) -> list[float]:
        conversational = [is_conversation(p) for p in prompts]
        completions = [m if c else t for t, m, c in zip(completions, as_assistant_messages(completions),
                                                        conversational)]
        passed = {"prompts": list(prompts), "completions": completions, **columns}
        if not self.all_columns:
            passed = {k: v for k, v in passed.items() if k in self.named}
        return self.fn(**passed)

    def _prefix_scores(self, prefixes, references, prompt: str = "", columns: dict | None = None) -> list[float]:
        """The function on every prefix of one completion, in one call (its prompt and columns repeated)."""
        n = len(prefixes)
        row = {k: [v] * n for k, v in (columns or {}).items()}
        values = self([prompt] * n, list(prefixes), [list(references)] * n, **row)
        return [0.0 if v is None else float(v) for v in values]  # not applicable: no credit


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
