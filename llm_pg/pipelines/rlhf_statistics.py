"""The pipeline's final comparison: the RL policy against the SFT policy it started from, on the test prompts.

Inputs are arrays of P prompts x K sampled completions per policy (sample k of RL is paired with sample k of SFT;
the prompt is the unit that is resampled, as llm_pg/evaluation/bootstrap.py does with K samples per prompt). For each reward
model (gold: never optimized; proxy: the RL reward):

    gain      d = mean_p [ mean_k s_RL(p, k) - mean_k s_SFT(p, k) ]     paired bootstrap 95 % CI, sign-flip p
    win rate  w = mean_p mean_k ( 1[s_RL(p,k) > s_SFT(p,k)] + 1/2 1[s_RL(p,k) = s_SFT(p,k)] )   CI in [0, 1];
              sign-flip p against 1/2 (trading a prompt's RL and SFT samples turns its w_p into 1 - w_p)
    length    b = Cov(L, s) / Var(L) over the SFT completions (least squares of s on the length L in tokens);
              length-predicted gain = b * (mean L_RL - mean L_SFT), reported beside d
    matched   the gain at matched length (llm_pg/evaluation/length_control.py): c of s = a + b L + c 1[RL] over
              both policies' completions, and a length-stratified gain; each with a paired-bootstrap 95 % CI

KL to the SFT policy: mean over the RL completions of sum_t (log pi_RL(a_t|s_t) - log pi_SFT(a_t|s_t)) at the
sampling temperature, the k1 estimator that training logs as policy/kl (Schulman, "Approximating KL divergence").

p-values: the paired sign-flip test over prompts (llm_pg/evaluation/bootstrap.py: exact when 2^P <= R, never below 2 / 2^P);
with fewer than bootstrap.MIN_UNITS prompts the result carries a warning, as no outcome can be significant.

The length part is a cross-sectional estimate, not a causal one: it says how much gain the SFT policy's own
score-length trend predicts for the length change; RL may change length and content together, and the trend may
not be linear beyond the SFT lengths, so it can over- or under-state length's share (docs/reward_model.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llm_pg.evaluation.bootstrap import SEED, clip, interval_and_p_value, resample_indices, sign_flip_p_value, too_few
from llm_pg.evaluation.length_control import regression_gain, stratified_gain


@dataclass
class PolicySamples:
    """One policy's completions of the P test prompts, K each: shapes (P, K)."""

    proxy: np.ndarray  # the proxy reward model's score
    gold: np.ndarray  # the gold reward model's score
    lengths: np.ndarray  # completion length in tokens
    kl: np.ndarray | None = None  # sum_t log pi - log pi_SFT of each completion (the RL policy only)


def bootstrap_mean(values: np.ndarray, resamples: int, seed: int = SEED, null: float = 0.0,
                   bounds: tuple[float, float] = (-np.inf, np.inf)) -> dict:
    """Mean of per-prompt values (P,) with its paired-bootstrap 95 % interval (centred on the observed mean, as in
    llm_pg/evaluation/bootstrap.py, and cut to `bounds`, the range the mean can take) and the two-sided sign-flip p-value of
    mean == null."""
    observed = float(values.mean())
    rows = resample_indices(len(values), resamples, seed)  # (R, P)
    d = values[rows].mean(1) - null  # (R,)
    low, high, _ = interval_and_p_value(d - d.mean() + observed - null)
    return {"value": observed, "ci": list(clip(low + null, high + null, bounds)),
            "p_value": sign_flip_p_value(values - null, resamples, seed)}


def wins(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(P,) per-prompt share of the K paired samples where b beats a (a tie counts 1/2)."""
    return ((b > a) + 0.5 * (b == a)).mean(1)


def length_slope(lengths: np.ndarray, scores: np.ndarray) -> float | None:
    """b of the least-squares line s = a + b L over every completion (None when all lengths are equal: no slope
    can be fitted, e.g. when every completion hit max_new_tokens)."""
    x, y = lengths.ravel().astype(float), scores.ravel().astype(float)
    var = float(((x - x.mean()) ** 2).mean())
    return float(((x - x.mean()) * (y - y.mean())).mean() / var) if var > 0 else None


def compare_scores(sft: np.ndarray, rl: np.ndarray, sft_lengths: np.ndarray, rl_lengths: np.ndarray,
                   resamples: int) -> dict:
    """Gain, win rate, the length-predicted gain and the gains at matched length of one reward model's scores (P, K)."""
    gain = bootstrap_mean(rl.mean(1) - sft.mean(1), resamples)
    slope = length_slope(sft_lengths, sft)
    predicted = slope * float(rl_lengths.mean() - sft_lengths.mean()) if slope is not None else None
    return {"matched_length": {"regression": regression_gain(sft, sft_lengths, rl, rl_lengths, resamples),
                               "stratified": stratified_gain(sft, sft_lengths, rl, rl_lengths, resamples)},
            "sft_mean": float(sft.mean()), "rl_mean": float(rl.mean()), "gain": gain["value"], "gain_ci": gain["ci"],
            "gain_p_value": gain["p_value"], **_win_rate(sft, rl, resamples), "length_slope": slope,
            "length_predicted_gain": predicted,
            "length_share": predicted / gain["value"] if predicted is not None and gain["value"] != 0 else None}


def _win_rate(sft: np.ndarray, rl: np.ndarray, resamples: int) -> dict:
    w = bootstrap_mean(wins(sft, rl), resamples, null=0.5, bounds=(0.0, 1.0))
    return {"win_rate": w["value"], "win_rate_ci": w["ci"], "win_rate_p_value": w["p_value"]}


def compare(sft: PolicySamples, rl: PolicySamples, resamples: int = 1000) -> dict:
    """The whole comparison (see the module docstring) as a JSON-ready dict."""
    if sft.gold.shape != rl.gold.shape:
        raise ValueError(f"compare: SFT has {sft.gold.shape} and RL {rl.gold.shape} samples; they must be paired")
    change = float(rl.lengths.mean() - sft.lengths.mean())
    P, K = sft.gold.shape
    return {"prompts": P, "samples_per_prompt": K, "resamples": resamples, "warning": too_few(P),
            "gold": compare_scores(sft.gold, rl.gold, sft.lengths, rl.lengths, resamples),
            "proxy": compare_scores(sft.proxy, rl.proxy, sft.lengths, rl.lengths, resamples),
            "kl_to_sft": float(rl.kl.mean()) if rl.kl is not None else None,
            "length": {"sft": float(sft.lengths.mean()), "rl": float(rl.lengths.mean()), "change": change}}


def rl_vs_dpo(dpo: PolicySamples, rl: PolicySamples, resamples: int = 1000) -> dict:
    """RL against DPO on the same test prompts (the pipeline's DPO arm, rlhf.dpo): per reward model, RL's gain over
    DPO and its win rate, raw and at matched length, with the paired-bootstrap intervals of `compare_scores` (DPO in
    the place of SFT, so `dpo_mean` is DPO's mean and `gain` is RL - DPO)."""
    if dpo.gold.shape != rl.gold.shape:
        raise ValueError(f"rl_vs_dpo: DPO has {dpo.gold.shape} and RL {rl.gold.shape} samples; they must be paired")
    result = {"prompts": dpo.gold.shape[0], "warning": too_few(dpo.gold.shape[0])}
    for name in ("gold", "proxy"):
        scores = compare_scores(getattr(dpo, name), getattr(rl, name), dpo.lengths, rl.lengths, resamples)
        result[name] = {("dpo_mean" if k == "sft_mean" else k): v for k, v in scores.items()}
    return result


def rl_vs_dpo_markdown(result: dict) -> str:
    """The report's RL-vs-DPO table: gain of RL over DPO, raw and at matched length, and RL's win rate."""
    def cell(value, ci):
        return f"{value:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]"

    lines = ["| reward model | DPO mean | RL mean | RL − DPO (95 % CI) | at equal length (regression) | win rate of RL "
             "(95 % CI) |", "|---|---|---|---|---|---|"]
    for name in ("gold", "proxy"):
        r = result[name]
        matched = r["matched_length"]["regression"]
        equal = "n/a (one length only)" if matched is None else cell(matched["value"], matched["ci"])
        lines.append(f"| {name} | {r['dpo_mean']:.3f} | {r['rl_mean']:.3f} | {cell(r['gain'], r['gain_ci'])} | "
                     f"{equal} | {r['win_rate']:.3f} [{r['win_rate_ci'][0]:.3f}, {r['win_rate_ci'][1]:.3f}] |")
    return "\n".join(lines) + "\n"


def markdown(result: dict, policy: str = "RL") -> str:
    """The report section: one table for both reward models, then KL and length. `policy` names the trained policy
    compared with SFT (RL, or DPO for the result of the pipeline's DPO arm)."""
    def ci(pair):
        return f"[{pair[0]:+.3f}, {pair[1]:+.3f}]"

    lines = [f"{policy} policy vs SFT policy on {result['prompts']} test prompts × {result['samples_per_prompt']} "
             f"sampled completions each (95 % CI: paired bootstrap over prompts, {result['resamples']} resamples; p: "
             "paired sign-flip test over prompts).", "",
             f"| reward model | SFT mean | {policy} mean | gain (95 % CI) | win rate of {policy} (95 % CI) | "
             "length-predicted gain |", "|---|---|---|---|---|---|"]
    for name in ("gold", "proxy"):
        r = result[name]
        share = f" ({100 * r['length_share']:.0f} % of the gain)" if r["length_share"] is not None else ""
        predicted = "n/a (one length only)" if r["length_predicted_gain"] is None else \
            f"{r['length_predicted_gain']:+.3f}{share}"
        lines.append(f"| {name} | {r['sft_mean']:.3f} | {r['rl_mean']:.3f} | {r['gain']:+.3f} {ci(r['gain_ci'])} | "
                     f"{r['win_rate']:.3f} [{r['win_rate_ci'][0]:.3f}, {r['win_rate_ci'][1]:.3f}] | "
                     f"{predicted} |")
    lines += ["", *_matched_length_table(result, policy)]
    if result.get("warning"):
        lines += ["", f"⚠️ **Too few test prompts**: {result['warning']}."]
    length = result["length"]
    kl = result["kl_to_sft"]
    lines += ["", f"KL(π_{policy} ‖ π_SFT): {kl:.3f} nats per completion (mean of Σ_t log π_{policy} − log π_SFT "
                  f"over the {policy} completions)." if kl is not None else "KL: not measured.",
              f"Answer length: SFT {length['sft']:.1f} tokens, {policy} {length['rl']:.1f} ({length['change']:+.1f}). "
              "The length-predicted gain is the SFT completions' least-squares slope of score on length times the "
              "length change: a cross-sectional estimate, not a causal one (docs/reward_model.md)."]
    return "\n".join(lines) + "\n"


def _matched_length_table(result: dict, policy: str = "RL") -> list[str]:
    """The gains at matched length beside the raw gain, one row per reward model."""
    def cell(estimate):
        if estimate is None:
            return "n/a (one length only)"
        return f"{estimate['value']:+.3f} [{estimate['ci'][0]:+.3f}, {estimate['ci'][1]:+.3f}]"

    lines = ["Gain at matched length (llm_pg/evaluation/length_control.py; 95 % CI: paired bootstrap over prompts): "
             f"the regression's c of s = a + b·L + c·1[{policy}] over both policies' completions, and the gain within "
             "length quartiles weighted by their pooled share.", "",
             "| reward model | raw gain | regression at equal length | length-stratified |", "|---|---|---|---|"]
    for name in ("gold", "proxy"):
        r = result[name]
        matched = r.get("matched_length", {})
        lines.append(f"| {name} | {r['gain']:+.3f} | {cell(matched.get('regression'))} | "
                     f"{cell(matched.get('stratified'))} |")
    return lines


def choice_markdown(choice: dict) -> str:
    """The report's table of the candidates' validation numbers."""
    def cell(estimate):
        return "n/a (one length only)" if estimate is None else \
            f"{estimate['value']:+.3f} [{estimate['ci'][0]:+.3f}, {estimate['ci'][1]:+.3f}]"

    lines = [f"Each candidate trained from the SFT policy; scored on {choice['prompts']} validation prompts x "
             f"{choice['samples_per_prompt']} samples (never the test prompts) by the {choice['statistic']}. "
             f"Chosen: **{choice['chosen']}** (its policy is the RL policy above).", "",
             "| candidate | overrides | gold gain, raw | at matched length (regression) | proxy gain, raw | tokens "
             "(SFT → candidate) | KL to SFT |", "|---|---|---|---|---|---|---|"]
    for name, record in choice["candidates"].items():
        r = record["validation"]
        mark = " (chosen)" if name == choice["chosen"] else ""
        lines.append(f"| {name}{mark} | {' '.join(record.get('overrides', [])) or '(as configured)'} | "
                     f"{r['gold']['gain']:+.3f} | {cell(r['gold']['matched_length']['regression'])} | "
                     f"{r['proxy']['gain']:+.3f} | {r['length']['sft']:.1f} → {r['length']['rl']:.1f} | "
                     f"{r['kl_to_sft']:.3f} |")
    return "\n".join(lines) + "\n"
