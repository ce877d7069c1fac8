"""RewardMix: the configured components, mixed by weight, shaped, checked, and optionally credited per token.

    R_raw = sum_c w_c * v_c            (v_c: component c's value, logged unweighted as reward/<name>)
    R     = clip((R_raw - mean) / std)  (normalize: running statistics; clip: [low, high]; both optional)

With per-token credit, decomposable components (BLEU, chrF, ROUGE, functions with per_token) spread w_c * v_c
over the tokens (token_credit.py); the other terms and the normalization/clipping adjustment sit on the last
token, so each row still sums to R.

Every call of a component gets its own deep copy of the prompts, completions, references and columns (`_private`):
a reward function that edits its inputs in place (TRL's examples append to `prompts` or rewrite `completions`)
changes neither what the next component sees nor the loaded records that the next step samples again.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field

from llm_pg.errors import LlmPgError
from llm_pg.rewards import spec as spec_module
from llm_pg.rewards.shaping import RunningMeanStd
from llm_pg.rewards.token_credit import differences

logger = logging.getLogger(__name__)


class RewardError(LlmPgError):
    """A reward that failed or returned a value that cannot be trained on."""


class RewardExit(RewardError):
    """Reward code that tried to end the process (sys.exit): always an error, even with on_error=penalty."""


FLOAT32_MAX = 3.4028234663852886e38  # rewards become float32 tensors: a larger value would turn into inf
# A component's value for a sample it does not apply to (a None from a TRL-style function): NaN in the component's
# values (left out of its logged mean, as TRL's nanmean), 0 in R (as TRL's nansum).
NOT_APPLICABLE = math.nan
_NONE = object()  # a None allowed by the component, until the values are checked


def in_reward(value: float) -> float:
    """A component's value as it enters R: a sample it does not apply to adds 0."""
    return 0.0 if math.isnan(value) else value


def _optional(component) -> bool:
    """The component's function may return None for a sample it does not apply to (TRL's convention)."""
    return getattr(component.fn, "none_means_not_applicable", False)


def _private(*inputs):
    """Deep copies of a component's inputs: what it edits in place stays its own (see the module docstring)."""
    return copy.deepcopy(inputs)


def _call(component, prompts, completions, references, columns) -> list:
    """The component's raw values, with sys.exit() / a returned None turned into an error that says so."""
    prompts, completions, references, columns = _private(prompts, completions, references, columns)
    try:
        values = component.fn(prompts, completions, references, **columns)
    except SystemExit as e:
        raise RewardExit(f"reward '{component.name}' called sys.exit({e.code!r}); a reward function must return "
                         "one number per completion, it cannot end the run (raise an exception instead)") from None
    if values is None or isinstance(values, (str, bytes, dict)) or not hasattr(values, "__len__"):
        raise RewardError(f"reward '{component.name}' returned {type(values).__name__} {values!r:.40}; a reward "
                          f"function returns a list of {len(completions)} numbers, one per completion")
    return list(values)


def build_component(component: spec_module.ComponentSpec):
    """The reward callable of one checked component (models and user code load here, not when checking)."""
    from llm_pg.rewards import custom, metrics, shaping

    kind, options, key = component.type, component.options, component.key
    if kind in metrics.METRIC_TYPES:
        return metrics.build_metric(kind, **options)
    if kind == "classifier":
        from llm_pg.rewards.classifier import ClassifierReward

        return ClassifierReward(**options, key=key)
    if kind == "reward_model":
        from llm_pg.rewards.reward_model import PreferenceReward

        return PreferenceReward(**options, key=key)
    if kind == "embedding":
        from llm_pg.rewards.embedding import EmbeddingSimilarity

        return EmbeddingSimilarity(**options, key=key)
    if kind == "function":
        return custom.FunctionReward(**options, key=key)
    if kind == "evaluate":
        return custom.EvaluateReward(**options, key_name=key)
    if kind == "verifier":
        from llm_pg.rewards.verifier import VerifierReward

        return VerifierReward(**options, key=key)
    if kind == "format":
        from llm_pg.rewards.verifier import FormatReward

        return FormatReward(**options)
    return {"length_penalty": shaping.LengthPenalty, "repetition_penalty": shaping.RepetitionPenalty,
            "soft_overlong_punishment": shaping.SoftOverlongPunishment}[kind](**options)


def _all_processes(raw: list[float], gather) -> list[float]:
    """Every process's R_raw, in process order (the same list on each process)."""
    import torch

    return [float(v) for v in gather(torch.tensor(raw, dtype=torch.float64)).tolist()]


@dataclass
class Component:
    name: str
    weight: float
    fn: object  # fn(prompts, completions, references, **columns) -> list[float]; maybe .prefix_scores

    @property
    def per_token(self) -> bool:
        return hasattr(self.fn, "prefix_scores")


@dataclass
class RewardBatch:
    """The rewards of N completions."""

    rewards: list[float]  # (N,) R: mixed, normalized and clipped
    components: dict[str, list[float]]  # name -> (N,) unweighted values (NOT_APPLICABLE where a function returned
    # None); also 'failed' / 'raw' when configured
    token_rewards: object = None  # (N, T) float64 tensor whose rows sum to `rewards`, with per-token credit


@dataclass
class RewardMix:
    """A weighted sum of named reward components, with shaping and checks (see the module docstring)."""

    components: list[Component]
    per_token: bool = False
    clip: list[float] | None = None
    normalize: bool = False
    on_error: str = "raise"
    error_penalty: float = -1.0
    normalizer: RunningMeanStd = field(default_factory=RunningMeanStd)
    failed_total: int = 0  # samples given error_penalty since the start of training

    @classmethod
    def from_config(cls, config) -> "RewardMix":
        """From a config.RewardConfig (the reward: section)."""
        specs = spec_module.check_reward_config(config)
        components = [Component(s.name, s.weight, build_component(s)) for s in specs]
        return cls(components, config.per_token, config.clip, config.normalize, config.on_error,
                   config.error_penalty)

    @property
    def signatures(self) -> dict[str, str]:
        """What computed each component (sacrebleu signature, library version, model); saved with the run."""
        return {c.name: getattr(c.fn, "signature", type(c.fn).__name__) for c in self.components}

    def __call__(self, prompts, completions, references, **columns) -> tuple[list[float], dict[str, list[float]]]:
        """-> (R per sample, {component name: per-sample values}), without updating the running statistics."""
        batch = self.reward_batch(prompts, completions, references, columns, update=False)
        return batch.rewards, batch.components

    def reward_batch(self, prompts, completions, references, columns: dict | None = None, tokens=None,
                     update: bool = True, gather=None, lengths: list[int] | None = None) -> RewardBatch:
        """Score N completions; with `tokens` (token_credit.CompletionTokens) and per_token, credit each token.

        lengths: (N,) completion lengths in tokens, given to the components that need them (needs_lengths, e.g.
            soft_overlong_punishment) as the `completion_lengths` column.

        update: add this batch's raw rewards to the running mean/std (normalize) before normalizing.
        gather: maps this process's (N,) float64 tensor of R_raw to all processes' (N * processes,), e.g.
            accelerator.gather; the statistics then grow by every process's batch, identically on each process.
        """
        columns = columns or {}
        N = len(completions)
        parts, failed = {}, [False] * N
        for component in self.components:
            own = {**columns, "completion_lengths": lengths} if getattr(component.fn, "needs_lengths", False) \
                and lengths is not None else columns
            parts[component.name] = self._values(component, prompts, completions, references, own, failed)
        raw = [sum(c.weight * in_reward(parts[c.name][i]) for c in self.components) for i in range(N)]
        if self.normalize and update:
            self.normalizer.update(raw if gather is None else _all_processes(raw, gather))
        rewards, scale = self._transform(raw)
        if self.on_error == "penalty":
            parts["failed"] = [float(f) for f in failed]
            self.failed_total += sum(failed) if update else 0
        if self.normalize or self.clip is not None:
            parts["raw"] = raw
        token_rewards = None
        if self.per_token and tokens is not None:
            token_rewards = self._token_rewards(tokens, prompts, completions, references, columns, parts, failed,
                                                raw, rewards, scale)
        return RewardBatch(rewards, parts, token_rewards)

    score = reward_batch  # its name in 0.1 ("score" meant three things); goes next release

    def _transform(self, raw: list[float]) -> tuple[list[float], float]:
        """-> (R = clip(scale * (R_raw - mean)), scale); before any statistics the batch's own are used."""
        mean, scale = 0.0, 1.0
        if self.normalize:
            stats = self.normalizer
            if stats.count == 0:
                stats = RunningMeanStd()
                stats.update(raw)
            mean, scale = stats.mean, stats.scale()
        values = [(r - mean) * scale for r in raw]
        if self.clip is not None:
            low, high = self.clip
            values = [min(max(v, low), high) for v in values]
        return values, scale

    def _values(self, component: Component, prompts, completions, references, columns, failed) -> list[float]:
        """The component's N values, checked; with on_error=penalty failures become error_penalty (and count)."""
        try:
            values = _call(component, prompts, completions, references, columns)
            if len(values) != len(completions):
                raise RewardError(f"reward '{component.name}' returned {len(values)} values for {len(completions)} "
                                  "completions")
            for i, v in enumerate(values):
                if (v is None and not _optional(component)) or isinstance(v, (str, bytes, bool)):
                    raise RewardError(f"reward '{component.name}' returned {v!r} for sample {i}; a reward function "
                                      "returns a number (int or float) for every completion")
            values = [_NONE if v is None else float(v) for v in values]
        except Exception as e:  # user code: find the sample(s) that fail and report or penalize them
            if isinstance(e, RewardError) and (self.on_error == "raise" or isinstance(e, RewardExit)):
                raise
            values = self._one_by_one(component, prompts, completions, references, columns, e)
        for i, v in enumerate(values):
            if v is _NONE:
                values[i] = NOT_APPLICABLE
                continue
            if v is not None and math.isfinite(v) and abs(v) <= FLOAT32_MAX:
                continue
            if self.on_error == "raise":
                raise RewardError(f"reward '{component.name}' returned {v} for sample {i}; rewards must be finite "
                                  f"numbers of magnitude <= {FLOAT32_MAX:.1e} (float32) (or set "
                                  "reward.on_error=penalty)")
            if v is not None:
                logger.warning("reward '%s' returned %s for sample %d: given reward.error_penalty=%s",
                               component.name, v, i, self.error_penalty)
            values[i], failed[i] = self.error_penalty, True
        return values

    def _one_by_one(self, component, prompts, completions, references, columns, batch_error) -> list[float]:
        """Score each sample alone to name (raise) or penalize (penalty) the ones that fail."""
        values = []
        for i in range(len(completions)):
            row = {k: v[i:i + 1] for k, v in columns.items()}
            try:
                [value] = _call(component, prompts[i:i + 1], completions[i:i + 1], references[i:i + 1], row)
                values.append(_NONE if value is None and _optional(component) else float(value))
            except RewardExit:
                raise
            except Exception as e:
                message = str(e).strip().splitlines()[0] if str(e).strip() else ""
                if self.on_error == "raise":
                    raise RewardError(f"reward '{component.name}' failed: {type(e).__name__}: {message} (sample {i}; "
                                      "set reward.on_error=penalty to give failing samples reward.error_penalty)"
                                      ) from None
                logger.warning("reward '%s' failed on sample %d (%s: %s): given reward.error_penalty=%s",
                               component.name, i, type(e).__name__, message, self.error_penalty)
                values.append(None)  # the caller gives it the penalty and counts it
        if self.on_error == "raise":  # every sample passes alone: the batch call itself is at fault
            first = str(batch_error).strip().splitlines()[0] if str(batch_error).strip() else ""
            raise RewardError(f"reward '{component.name}' failed: {type(batch_error).__name__}: {first} (on the "
                              f"batch of {len(completions)}; each sample alone succeeds)")
        return values

    def _token_rewards(self, tokens, prompts, completions, references, columns, parts, failed, raw, rewards, scale):
        """(N, T) float64: scale * (per-token credit of the raw reward), plus R - scale * R_raw on the last token."""
        import torch

        from llm_pg.rewards.token_credit import prefix_texts, to_tensor

        mask = tokens.completion_mask
        if any(c.per_token for c in self.components):
            prefixes = prefix_texts(tokens)
        else:  # nothing to spread: every term goes on the last token
            prefixes = [[c] for c in completions]
        dense_rows, on_last = [], []
        for i, texts in enumerate(prefixes):
            row, last = [0.0] * len(texts), 0.0
            exact = bool(texts) and texts[-1] == completions[i] and not failed[i]
            if texts and not exact and not failed[i]:
                logger.warning("per-token credit: the decoded prefixes of sample %d do not end in its completion; "
                               "its reward goes on the last token", i)
            for c in self.components:
                credit = self._credit(c, texts, prompts[i], references[i], columns, i) if exact else None
                if credit is not None:
                    row = [r + c.weight * d for r, d in zip(row, credit)]
                else:
                    last += c.weight * in_reward(parts[c.name][i])
            dense_rows.append(row)
            on_last.append(last)
        dense = to_tensor(dense_rows, tuple(mask.shape)) * scale  # (N, T)
        last_index = (mask.sum(1) - 1).clamp(min=0).cpu()  # (N,)
        dense[torch.arange(len(completions)), last_index] += torch.tensor(
            [R - scale * (R_raw - L) for R, R_raw, L in zip(rewards, raw, on_last)],
            dtype=torch.float64)
        return dense * mask.cpu().double()

    def _credit(self, component, texts, prompt, references, columns, i) -> list[float] | None:
        """r_t = M(prefix <= t) - M(prefix < t) for sample i, or None to credit the component on the last token."""
        if not component.per_token:
            return None
        row = {k: v[i] for k, v in columns.items()}  # a user function sees the sample's own prompt and columns
        texts, references, prompt, row = _private(texts, references, prompt, row)
        try:
            scores = [float(v) for v in component.fn.prefix_scores(texts, references, prompt=prompt, columns=row)]
            if len(scores) != len(texts) or not all(math.isfinite(v) for v in scores):
                raise RewardError(f"{len(scores)} prefix scores for {len(texts)} prefixes, or a non-finite one")
        except Exception as e:
            if self.on_error == "raise":
                raise RewardError(f"reward '{component.name}' per-token credit failed on sample {i}: "
                                  f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                                  ) from None
            logger.warning("reward '%s' per-token credit failed on sample %d; credited on its last token",
                           component.name, i)
            return None
        return differences(scores)

    def state_dict(self) -> dict:
        return {"normalizer": self.normalizer.state_dict(), "failed_total": self.failed_total}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.normalizer.load_state_dict(state["normalizer"])
            self.failed_total = state.get("failed_total", 0)


RewardModel = RewardMix  # its name in 0.1 ("reward model" now means only a model trained by `llm-pg rm`)
