"""User rewards: a Python callable named in the config, or a Hugging Face `evaluate` module scored per sample."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from pathlib import Path

from llm_pg.errors import ConfigError


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


class FunctionReward:
    """fn(prompts, completions, references, **columns) -> list[float]; columns are passed only if fn takes them.

    A function with **kwargs gets every column of the records; one with named parameters gets those columns.
    """

    def __init__(self, function: str, per_token: bool = False, key: str = "reward.function"):
        self.fn = load_callable(function, f"{key}.function")
        self.signature = f"function:{function}"
        try:
            parameters = inspect.signature(self.fn).parameters.values()
        except (TypeError, ValueError):  # builtins without a signature
            parameters = []
        self.all_columns = any(p.kind is p.VAR_KEYWORD for p in parameters)
        self.named = {p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
        if per_token:  # prefixes are scored with the function itself, one call per completion
            self.prefix_scores = self._prefix_scores

    def __call__(self, prompts, completions, references, **columns) -> list[float]:
        passed = columns if self.all_columns else {k: v for k, v in columns.items() if k in self.named}
        return self.fn(prompts, completions, references, **passed)

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
