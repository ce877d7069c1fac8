"""The gold-vs-KL frontier of the compare stage (rlhf.frontier_steps): is RL better than DPO at matched KL?

A policy further from SFT can score more (or less) just by moving further, and RL and DPO end at different KL, so
their final policies alone are not compared "at matched KL". As Gao et al. 2022 ("Scaling laws for reward model
overoptimization", gold score against KL) and Rafailov et al. 2023 (DPO, fig. 2: reward against KL) do, each method
is scored along its training: the policies its run kept at rlhf.frontier_steps (rl/policies/, dpo/policies/) and its
final one, each sampled and scored exactly as the final policies are (rlhf_evaluate.sample_policy: the same test
prompts, seed and K; rlhf_statistics.compare against the same SFT samples).

    point     (KL_i, g_i) of one policy: KL_i its mean per-completion KL to SFT (sum_t log pi - log pi_SFT, k1),
              g_i its gold gain over SFT (raw; or at matched length, the regression's c); SFT is (0, 0) for both
    curve     g_m(kappa): the piecewise-linear interpolant of method m's points sorted by KL (points of equal KL are
              merged into their mean gain), on [min_i KL_i, max_i KL_i]; a point whose KL is below an earlier
              one's (a non-monotone run) is placed by its KL, not by its step
    matched   on the overlap [lo, hi] = [max(min KL_a, min KL_b), min(max KL_a, max KL_b)] (empty when lo > hi), at
              kappa_j = every point's KL of either method inside it: g_a(kappa_j), g_b(kappa_j) and
              D(kappa_j) = g_a(kappa_j) - g_b(kappa_j). D is piecewise linear with kinks at those kappa_j only, so
              they describe it exactly; its mean over the overlap, 1/(hi - lo) integral_lo^hi D dkappa, is the
              trapezoid sum over them (exact; D(lo) when lo = hi)

Intervals: each point's gain has its paired-bootstrap interval (rlhf_statistics). The values D(kappa_j) are point
estimates (no interval: a fixed kappa_j can fall outside a resample's overlap). The mean of D over the overlap of the
raw gold gain has a paired-bootstrap interval over prompts: each resample draws P prompts with replacement, the same
prompts for every policy (SFT included: the gains are paired with its samples), recomputes every point's (KL_i, g_i)
from them, and the mean of D over that resample's own overlap, so the noise of the KL axis is in it too; centred on
the observed mean as rlhf_statistics.bootstrap_mean is; p: the bootstrap's two-sided p of "mean = 0". It resamples
prompts, not training runs (one seed per method). The mean at matched length has no interval.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from llm_pg.evaluation.bootstrap import SEED, interval_and_p_value, resample_indices
from llm_pg.pipelines.rlhf_statistics import PolicySamples, compare

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MatchedKL:
    """Two methods' gains at common KL values (see the module docstring); all lists are empty without overlap."""

    kl: list[float]  # kappa_j, increasing
    a: list[float]  # g_a(kappa_j)
    b: list[float]  # g_b(kappa_j)
    difference: list[float]  # D(kappa_j) = g_a - g_b
    overlap: tuple[float, float] | None  # [lo, hi]; None when the KL ranges do not meet
    mean_difference: float | None  # 1/(hi - lo) integral D dkappa (D(lo) when lo = hi)


def merged_curve(points: Sequence[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """(kappa, g): the points' KLs sorted and unique, each with the mean gain of the points at that KL."""
    if not len(points):
        raise ValueError("merged_curve: a curve needs at least one (KL, gain) point")
    kl, gain = np.asarray(points, dtype=float).reshape(-1, 2).T
    kappa, which = np.unique(kl, return_inverse=True)
    return kappa, np.bincount(which, weights=gain) / np.bincount(which)


def gain_at_matched_kl(a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]) -> MatchedKL:
    """Method a's and b's gains linearly interpolated at common KL values, and a - b (see the module docstring)."""
    ka, ga = merged_curve(a)
    kb, gb = merged_curve(b)
    lo, hi = max(ka[0], kb[0]), min(ka[-1], kb[-1])
    if lo > hi:
        return MatchedKL([], [], [], [], None, None)
    grid = np.unique(np.concatenate([ka, kb]))
    grid = grid[(grid >= lo) & (grid <= hi)]  # lo and hi are knots themselves: both are in it
    va, vb = np.interp(grid, ka, ga), np.interp(grid, kb, gb)
    d = va - vb
    mean = float(((d[1:] + d[:-1]) / 2 * np.diff(grid)).sum() / (hi - lo)) if hi > lo else float(d[0])
    return MatchedKL(grid.tolist(), va.tolist(), vb.tolist(), d.tolist(), (float(lo), float(hi)), mean)


def frontier_point(sft: PolicySamples, policy: PolicySamples, resamples: int, step: int | None, name: str) -> dict:
    """One policy's point: rlhf_statistics.compare against the SFT samples, the numbers the frontier reads."""
    r = compare(sft, policy, resamples)
    matched = r["gold"]["matched_length"]["regression"]
    return {"policy": name, "step": step, "kl_to_sft": r["kl_to_sft"], "gold_gain": r["gold"]["gain"],
            "gold_gain_ci": r["gold"]["gain_ci"],
            "gold_gain_matched_length": None if matched is None else {"value": matched["value"], "ci": matched["ci"]},
            "proxy_gain": r["proxy"]["gain"], "length": r["length"]["rl"]}


def frontier(sft: PolicySamples, curves: dict[str, dict[str, tuple[int | None, PolicySamples]]], steps: list[int],
             missing: dict[str, list[int]], resamples: int) -> dict:
    """comparison.json's "frontier": per method its points (SFT's (0, 0) first, then its kept policies and its final
    one, as {name: (step, samples)}), and with two methods RL - DPO at matched KL, raw and at matched length."""
    methods = {}
    for method, policies in curves.items():
        points = [{"policy": "sft", "step": 0, "kl_to_sft": 0.0, "gold_gain": 0.0, "gold_gain_ci": [0.0, 0.0],
                   "gold_gain_matched_length": {"value": 0.0, "ci": [0.0, 0.0]}, "proxy_gain": 0.0,
                   "length": float(sft.lengths.mean())}]
        points += [frontier_point(sft, samples, resamples, step, name) for name, (step, samples) in policies.items()]
        methods[method] = {"points": points, "missing_steps": missing.get(method, [])}
    result = {"steps": steps, "methods": methods}
    if {"rl", "dpo"} <= set(methods):
        result["rl_vs_dpo"] = {key: _matched(methods, key) for key in ("gold_gain", "gold_gain_matched_length")}
        raw = result["rl_vs_dpo"]["gold_gain"]
        if raw["overlap"] is not None:
            rl, dpo = ([samples for _, samples in curves[m].values()] for m in ("rl", "dpo"))
            raw.update(mean_difference_interval(sft, rl, dpo, raw["mean_rl_minus_dpo"], resamples))
    return result


def mean_difference_interval(sft: PolicySamples, a: list[PolicySamples], b: list[PolicySamples], observed: float,
                             resamples: int, seed: int = SEED) -> dict:
    """The paired-bootstrap 95 % interval and p of the mean of D = g_a - g_b over the overlap (raw gold gain; see
    the module docstring); a and b are each method's policies besides SFT, which is (0, 0) in every resample."""
    rows = resample_indices(sft.gold.shape[0], resamples, seed)  # (R, P)

    def curves(policies) -> np.ndarray:  # (R, 1 + n, 2): per resample the method's (KL_i, g_i), SFT first
        kl = np.stack([p.kl.mean(1)[rows].mean(1) for p in policies], 1)  # (R, n)
        gain = np.stack([(p.gold.mean(1) - sft.gold.mean(1))[rows].mean(1) for p in policies], 1)  # (R, n)
        return np.concatenate([np.zeros((len(rows), 1, 2)), np.stack([kl, gain], -1)], 1)

    means = np.array([_or_nan(gain_at_matched_kl(x, y).mean_difference) for x, y in zip(curves(a), curves(b))])
    means = means[np.isfinite(means)]  # none in practice: both curves hold SFT's (0, 0), so their ranges meet
    if not len(means):
        return {"mean_rl_minus_dpo_ci": None, "mean_rl_minus_dpo_p_value": None, "resamples_used": 0}
    low, high, p = interval_and_p_value(means - means.mean() + observed)
    return {"mean_rl_minus_dpo_ci": [low, high], "mean_rl_minus_dpo_p_value": p, "resamples_used": int(len(means))}


def _or_nan(value: float | None) -> float:
    return np.nan if value is None else value


def _matched(methods: dict, key: str) -> dict | None:
    """RL - DPO at matched KL of one gain (None for the gain at matched length when a point has none)."""
    def curve(method):
        values = [(p["kl_to_sft"], p[key] if key == "gold_gain" else (p[key] or {}).get("value"))
                  for p in methods[method]["points"]]
        return None if any(g is None for _, g in values) else values

    rl, dpo = curve("rl"), curve("dpo")
    if rl is None or dpo is None:
        return None
    m = gain_at_matched_kl(rl, dpo)
    return {"kl": m.kl, "rl": m.a, "dpo": m.b, "rl_minus_dpo": m.difference,
            "overlap": None if m.overlap is None else list(m.overlap), "mean_rl_minus_dpo": m.mean_difference}


def kept_policies(config, out: Path) -> tuple[dict[str, dict[int, Path]], dict[str, list[int]]]:
    """({method: {step: folder}} of the policies the rl (and dpo) runs kept at rlhf.frontier_steps, {method: steps
    with no kept policy}): a run stopped early (evaluation.stop_on_hacking) never reached its later steps."""
    from llm_pg.pipelines.rlhf_configs import frontier_steps
    from llm_pg.training.setup import policy_at_step

    kept, missing = {}, {}
    for method in ("rl", "dpo") if config.rlhf.dpo else ("rl",):
        folders = {s: policy_at_step(out / method, s) for s in frontier_steps(config)}
        kept[method] = {s: f for s, f in folders.items() if (f / "config.json").is_file()}
        missing[method] = [s for s in folders if s not in kept[method]]
        if missing[method]:
            logger.warning("rlhf frontier: %s kept no policy at step(s) %s (its run ended before them); the "
                           "frontier has no point there", method, missing[method])
    return kept, missing


def final_step(config, out: Path, method: str) -> int | None:
    """The step of a method's final policy: RL's from rl/final/selected.json (the last or the best validation
    policy), DPO's dpo.max_steps."""
    import json

    if method == "dpo":
        return config.dpo.max_steps
    selected = out / "rl" / "final" / "selected.json"
    return json.loads(selected.read_text()).get("step") if selected.is_file() else None


def frontier_markdown(result: dict) -> str:
    """The report's frontier: each method's points, then RL - DPO at matched KL."""
    def ci(pair):
        return f"[{pair[0]:+.3f}, {pair[1]:+.3f}]"

    lines = ["Each policy scored on the same test prompts, samples and seed as the final ones (95 % CI: paired "
             "bootstrap over prompts). SFT is the point (0, 0) of both methods.", "",
             "| method | policy | step | KL to SFT | gold gain (95 % CI) | at matched length | proxy gain | tokens |",
             "|---|---|---|---|---|---|---|---|"]
    for method, record in result["methods"].items():
        for p in record["points"]:
            m = p["gold_gain_matched_length"]
            equal = "n/a (one length only)" if m is None else f"{m['value']:+.3f} {ci(m['ci'])}"
            lines.append(f"| {method.upper()} | {p['policy']} | {p['step'] if p['step'] is not None else '?'} | "
                         f"{p['kl_to_sft']:.3f} | {p['gold_gain']:+.3f} {ci(p['gold_gain_ci'])} | {equal} | "
                         f"{p['proxy_gain']:+.3f} | {p['length']:.1f} |")
    lines += [f"\n{m.upper()} kept no policy at step(s) {r['missing_steps']} (its run ended before them)."
              for m, r in result["methods"].items() if r["missing_steps"]]
    matched = (result.get("rl_vs_dpo") or {}).get("gold_gain")
    if matched is None:
        return "\n".join(lines) + "\n"
    if matched["overlap"] is None:
        return "\n".join(lines + ["", "RL and DPO reached no common KL: no comparison at matched KL."]) + "\n"
    lines += ["", "RL − DPO gold gain at matched KL: each method's gain linearly interpolated between its points "
              "(sorted by KL) at every point's KL inside the KL range both reached (point estimates, no interval).",
              "", "| KL to SFT | RL gold gain | DPO gold gain | RL − DPO |", "|---|---|---|---|"]
    lines += [f"| {k:.3f} | {a:+.3f} | {b:+.3f} | {d:+.3f} |"
              for k, a, b, d in zip(matched["kl"], matched["rl"], matched["dpo"], matched["rl_minus_dpo"])]
    ci = matched.get("mean_rl_minus_dpo_ci")
    lines += ["", f"Mean RL − DPO over KL {matched['overlap'][0]:.3f} to {matched['overlap'][1]:.3f}: "
                  f"{matched['mean_rl_minus_dpo']:+.3f}" + (f" [95 % CI {ci[0]:+.3f}, {ci[1]:+.3f}] (paired bootstrap "
                  "over prompts, each point's KL and gain recomputed per resample; training runs not resampled)."
                  if ci else ".")]
    return "\n".join(lines) + "\n"


def frontier_line(result: dict) -> str:
    """The printed summary's line."""
    matched = (result.get("rl_vs_dpo") or {}).get("gold_gain")
    counts = ", ".join(f"{m.upper()} {len(r['points'])} points (KL up to "
                       f"{max(p['kl_to_sft'] for p in r['points']):.3f})" for m, r in result["methods"].items())
    if matched is None:
        return f"frontier: {counts}"
    if matched["overlap"] is None:
        return f"frontier: {counts}; no common KL, so no RL - DPO at matched KL"
    lo, hi = matched["overlap"]
    ci = matched.get("mean_rl_minus_dpo_ci") or [np.nan, np.nan]
    return (f"frontier: {counts}; RL - DPO gold gain at matched KL: mean {matched['mean_rl_minus_dpo']:+.3f} "
            f"[95 % CI {ci[0]:+.3f}, {ci[1]:+.3f}] over KL {lo:.3f}-{hi:.3f}, {matched['rl_minus_dpo'][-1]:+.3f} at KL "
            f"{hi:.3f} (a point estimate)")
