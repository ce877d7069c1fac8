"""The objective matrix: every combination of the options that shape the policy gradient, generated from llm_pg's own
option tables, follows the objective docs/algorithms.md claims for it, is biased as documented (and measured to be),
or is refused when the config loads.

Method: tests/test_exact_gradients.py (every joint outcome of a step's samples sent through llm_pg's own scoring and
update code, weighted by its exact probability, against the gradient of the claimed objective by autograd).

The claimed objective of a prompt (`claim` gives the weights w, or says "biased" and why):

    J = w_R E[gamma^(L-1) R] - w_kr beta E[sum_t gamma^t k1_t] - w_kl beta sum_t E_s[KL(pi_ref || pi)]
        + w_H c sum_t E_s[H(pi)]                         (kl.mode reward / loss, entropy bonus c; L = length)

`claim` looks every option value up in a table and raises on one it does not know, so a value added to ALGORITHMS,
BASELINES, KL_MODES, GRPO_SCALES or LOSS_REDUCTIONS enters the matrix by itself and fails until it gets a claim; a
field added to a section that shapes the update fails `test_every_update_field_is_a_dimension_or_explained` until it
is a dimension here or NOT_DIMENSIONS says why it cannot change the first step's gradient.

  tier 1   the full cross product of the advantage dimensions (algorithm, baseline, kl, grpo.scale_rewards,
           whitening, ppo.use_critic) at T = 1, K = 2
  tier 2   every pair of values of a length dimension (loss_reduction, mask_truncated_completions, gamma, per-token
           credit, entropy bonus) with any dimension's, at T = 2 (a greedy covering array of accepted combinations)
  beta     grpo x kl.mode x scale_rewards x loss_reduction with a constant task reward: E[grad L] proportional to beta
  dynamic  every combination with algorithm.dynamic_sampling: accepted exactly when the groups it drops have A = 0

    python -m pytest -q tests/test_objective_matrix.py
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from dataclasses import dataclass

import pytest
import torch

from enumeration import (PROMPTS, V, all_completions, build_policy, completion_table, joint_rollout,
                         reference_of, state_logprobs)
from test_exact_gradients import (COSINE_MIN, RELATIVE_ERROR_MAX, Case, accelerator, config_for,  # noqa: F401
                                  cosine_and_relative_error, critic_setup, entropy, expected_loss_gradient,
                                  kl_ref_to_policy, reward_table, setup, visited_states)
from llm_pg.algorithms import advantages as adv
from llm_pg.algorithms.advantages import BASELINES, GRPO_SCALES
from llm_pg.algorithms.registry import ALGORITHMS, get_algorithm
from llm_pg.config.schema import (AlgorithmConfig, CriticConfig, GenerationConfig, GRPOConfig, KLConfig, PPOConfig,
                           RewardConfig, TrainConfig)
from llm_pg.errors import ConfigError
from llm_pg.algorithms.kl import KL_MODES, KLPenalty
from llm_pg.algorithms.losses import LOSS_REDUCTIONS
from llm_pg.training.scoring import RolloutRewards, score_rollout

BETA = 0.3
KL_SETTINGS = {"off": {}, **{mode: {"kl.coef": BETA, "kl.mode": mode} for mode in KL_MODES}}  # estimator auto
ADVANTAGE_DIMS = {
    "algorithm.name": list(ALGORITHMS),
    "algorithm.baseline": list(BASELINES),
    "kl": list(KL_SETTINGS),
    "grpo.scale_rewards": list(GRPO_SCALES),
    "algorithm.whiten_advantages": [False, True],
    "ppo.use_critic": [False, True],
}
LENGTH_DIMS = {
    "algorithm.loss_reduction": list(LOSS_REDUCTIONS),
    "algorithm.mask_truncated_completions": [False, True],
    "algorithm.gamma": [1.0, 0.8],
    "reward.per_token": [False, True],
    "algorithm.entropy_coef": [0.0, 0.1],
}
DIMENSION_FIELDS = {*ADVANTAGE_DIMS, *LENGTH_DIMS, "kl.coef", "kl.mode"} - {"kl"}

# Every other field of the sections that shape the update, and why the matrix need not vary it.
NOT_DIMENSIONS = {
    "algorithm.moving_average_decay": "moves the average after the step; before it the average is a constant "
                                      "baseline (baseline=moving_average rows)",
    "algorithm.dynamic_sampling": "chooses which groups enter the batch: test_dynamic_sampling_is_accepted_exactly_"
                                  "when_dropped_groups_have_zero_advantage",
    "algorithm.dynamic_sampling_max_rounds": "as algorithm.dynamic_sampling",
    "critic.learning_rate": "the value head's optimizer group, not the policy's gradient",
    "critic.gae_lambda": "rows use lambda = 1 (any critic is then a baseline); lambda = 0.5 with the true values: "
                         "test_exact_gradients.CRITIC_CASES",
    "critic.detach_trunk": "false lets the value loss into the trunk by design (docs/algorithms.md); rows keep true",
    "critic.loss_coef": "weights the value loss, which reaches the policy only with detach_trunk: false",
    "critic.value_clip": "the value loss only",
    "critic.warmup_steps": "critic-only steps give the policy no gradient at all (tests/test_correctness.py)",
    "ppo.epochs": "steps after the first are off-policy by design; rows capture the first (ratio exactly 1)",
    "ppo.num_minibatches": "as ppo.epochs (the first minibatch: test_exact_gradients 'ppo,first_minibatch')",
    "ppo.clip_eps": "the first step's ratio is exactly 1: no clip acts there",
    "ppo.dual_clip": "as ppo.clip_eps",
    "ppo.clip_eps_high": "as ppo.clip_eps",
    "ppo.target_kl": "stops later epochs of ppo and grpo (test_target_kl_and_minibatches_act_on_grpo_as_on_ppo)",
    "kl.estimator": "auto in the rows; k1 in the reward and k3 in the loss are auto, the other pairs are refused "
                    "(test_exact_gradients.REFUSED)",
    "kl.reference_device": "where the reference runs, not what it computes",
    "kl.target": "adapts beta after the step; the step itself uses a fixed beta",
    "kl.horizon": "as kl.target",
    "reward.components": "the matrix takes the task reward R as given: a random table R(x, y)",
    "reward.normalize": "transforms R before scoring: the rows' R is what reaches the scoring stage",
    "reward.clip": "as reward.normalize",
    "reward.on_error": "as reward.normalize",
    "reward.error_penalty": "as reward.normalize",
    "reward.control": "replaces R by a reward independent of the completion (a control arm, by design not the task's "
                      "objective); what reaches the scoring stage is still one R per completion: "
                      "tests/test_control_arms.py",
    "generation.num_samples": "K of each row",
    "generation.max_new_tokens": "T of each row",
    "generation.temperature": "test_exact_gradients rows temperature=0.7 / 1.5",
    "generation.top_k": "refused for training (test_exact_gradients.REFUSED)",
    "generation.top_p": "refused for training (test_exact_gradients.REFUSED)",
    "generation.backend": "how a token is drawn from pi, not pi itself (tests/test_generation_backends.py)",
    "generation.stop_strings": "where a completion ends; the rows' completions end at EOS or the length limit",
}
UPDATE_SECTIONS = {"algorithm": AlgorithmConfig, "critic": CriticConfig, "ppo": PPOConfig, "grpo": GRPOConfig,
                   "kl": KLConfig, "reward": RewardConfig, "generation": GenerationConfig}


def test_every_update_field_is_a_dimension_or_explained():
    fields = {f"{section}.{f.name}" for section, cls in UPDATE_SECTIONS.items() for f in dataclasses.fields(cls)}
    assert sorted(fields - DIMENSION_FIELDS - set(NOT_DIMENSIONS)) == [], "a new field: add a dimension or a reason"
    assert sorted((DIMENSION_FIELDS | set(NOT_DIMENSIONS)) - fields) == [], "a field that no longer exists"


# ---------------------------------------------------------------- the claims (docs/algorithms.md, same table)

# (K) -> the weight of the returns in the advantage: grpo's group mean includes the sample itself
RETURN_WEIGHT = {"reinforce": lambda K: 1.0, "actor_critic": lambda K: 1.0, "ppo": lambda K: 1.0,
                 "grpo": lambda K: (K - 1) / K}
EXACT_BASELINES = {"none", "moving_average", "leave_one_out", "greedy"}  # a baseline independent of the sample
SCALE_BIAS = {"none": None, "group": "each group is divided by its own std",
              "batch": "the step is divided by the std of its own rewards"}
# (T_max) -> the constant the reduction divides every term by, or None where it divides by the samples' lengths
REDUCTION_CONSTANT = {"sequence_mean": lambda T: 1.0, "fixed_token_mean": lambda T: 1.0 / T,
                      "token_mean": lambda T: 1.0 if T == 1 else None,  # at T = 1 every completion has 1 token
                      "sequence_token_mean": lambda T: 1.0 if T == 1 else None}
KL_WEIGHTS = {"off": (0, 0), "reward": (1, 0), "loss": (0, 1)}  # (in the returns, in the loss)


@dataclass(frozen=True)
class Claim:
    """E[grad L] = -grad J with these weights (exact), or a documented bias (why)."""

    task: float = 1.0
    kl_reward: float = 0.0
    kl_loss: float = 0.0
    entropy: float = 1.0
    why_biased: tuple[str, ...] = ()

    @property
    def exact(self) -> bool:
        return not self.why_biased


def claim(config, K: int, T: int) -> Claim:
    """What the documentation claims for a validated config (raises KeyError on an option value it does not know)."""
    a, algorithm = config.algorithm, get_algorithm(config)
    returns = RETURN_WEIGHT[a.name](K)
    biased = []
    if algorithm.uses_baseline(config) and a.baseline not in EXACT_BASELINES:
        biased.append(f"baseline {a.baseline}")
    if not algorithm.reads_baseline and SCALE_BIAS[config.grpo.scale_rewards]:
        biased.append(SCALE_BIAS[config.grpo.scale_rewards])
    if algorithm.reads_baseline and a.whiten_advantages:
        biased.append("whitening divides by the batch's own std")
    if a.mask_truncated_completions:
        biased.append("truncated completions get no gradient but keep their reward in the baselines")
    constant = REDUCTION_CONSTANT[a.loss_reduction](T)
    if constant is None:
        biased.append(f"{a.loss_reduction} divides by the samples' own lengths")
    if a.gamma < 1 and T > 1 and (algorithm.reads_baseline or config.reward.per_token):
        biased.append("each token's return is discounted from its own position")  # grpo: G_0 on every token
    in_returns, in_loss = KL_WEIGHTS["off" if config.kl.coef == 0 else config.kl.mode]
    c = constant or 1.0
    return Claim(task=c * returns, kl_reward=c * returns * in_returns, kl_loss=c * in_loss, entropy=c,
                 why_biased=tuple(biased))


def refusal(combo: dict) -> str | None:
    """The field a refused combination's error names (None: accepted)."""
    if combo["algorithm.name"] == "grpo" and combo["kl"] == "reward" and combo["grpo.scale_rewards"] != "none":
        return r"^kl\.mode: reward puts beta \* KL into the returns.*use kl\.mode: loss"
    return None


# ---------------------------------------------------------------- the claimed objective, by enumeration


def token_logprobs(states, y: tuple[int, ...]) -> list[torch.Tensor]:
    """[log pi(y_t | x, y_<t)] for each token of y."""
    return [states.first[y[0]]] + ([states.second[y[0], y[1]]] if len(y) == 2 else [])


def claimed_objective(config, setup, c: Claim, prompt: list[int], rewards: torch.Tensor, T: int) -> torch.Tensor:
    """J of one prompt with the claim's weights (module docstring).  rewards (C,)."""
    tau, gamma, completions = config.generation.temperature, config.algorithm.gamma, all_completions(T)
    states = state_logprobs(setup.policy, prompt, T, tau)
    logp = torch.stack([sum(token_logprobs(states, y)) for y in completions])  # (C,)
    discount = torch.tensor([gamma ** (len(y) - 1) for y in completions])
    J = c.task * (logp.exp() * rewards * discount).sum()
    if config.kl.coef > 0:
        with torch.no_grad():
            ref = state_logprobs(setup.reference.model, prompt, T, tau)
        k1 = torch.stack([sum(gamma ** t * (lp - rp) for t, (lp, rp) in
                              enumerate(zip(token_logprobs(states, y), token_logprobs(ref, y)))) for y in completions])
        J = J - c.kl_reward * config.kl.coef * (logp.exp() * k1).sum()
        J = J - c.kl_loss * config.kl.coef * sum(p * kl_ref_to_policy(r, lp) for (p, lp), (_, r) in
                                                 zip(visited_states(states), visited_states(ref)))
    if config.algorithm.entropy_coef > 0:
        J = J + c.entropy * config.algorithm.entropy_coef * sum(p * entropy(lp) for p, lp in visited_states(states))
    return J


def claimed_gradient(config, setup, c: Claim, rewards: torch.Tensor, T: int, B: int) -> torch.Tensor:
    J = sum(claimed_objective(config, setup, c, PROMPTS[b], rewards[b], T) for b in range(B)) / B
    params = setup.learner.optimizer.policy_parameters
    grads = torch.autograd.grad(J, params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)]).double()


def prefix_credit(rewards: torch.Tensor, T: int, seed: int = 5) -> torch.Tensor:
    """(B, C, T) per-token credit r_t = M(y_<=t) - M(y_<t), M(y) = R(y) and M(a) random for a running first token a,
    as reward.per_token gives it (each row sums to R)."""
    B, completions = rewards.shape[0], all_completions(T)
    first = torch.randn(B, V, generator=torch.Generator().manual_seed(seed))
    credit = torch.zeros(B, len(completions), T)
    for b, (c, y) in itertools.product(range(B), enumerate(completions)):
        if len(y) == 1:
            credit[b, c, 0] = rewards[b, c]
        else:
            credit[b, c, 0], credit[b, c, 1] = first[b, y[0]], rewards[b, c] - first[b, y[0]]
    return credit


# ---------------------------------------------------------------- the combinations


def raw_config(overrides: dict) -> TrainConfig:
    """A TrainConfig with these dotted values, not validated (to ask the algorithm what it reads)."""
    config = TrainConfig()
    for key, value in overrides.items():
        section, name = key.split(".")
        setattr(getattr(config, section), name, value)
    return config


def overrides_of(combo: dict) -> dict:
    values = {k: v for k, v in combo.items() if k != "kl"}
    return {**values, **KL_SETTINGS[combo["kl"]], "ppo.num_minibatches": 1}  # one minibatch: B = 1 prompt


def read_dims(combo: dict) -> set[str]:
    """The dimensions the combination's algorithm reads (the others are set to their first value)."""
    return set(_read_dims(tuple(combo.items())))


@functools.lru_cache(maxsize=None)
def _read_dims(items: tuple) -> frozenset:
    combo = dict(items)
    config = raw_config(overrides_of(combo))
    algorithm = get_algorithm(config)
    read = {"algorithm.name", "kl", *LENGTH_DIMS}
    if algorithm.uses_baseline(config):
        read.add("algorithm.baseline")
    read.add("algorithm.whiten_advantages" if algorithm.reads_baseline else "grpo.scale_rewards")
    with_critic, without = (algorithm.uses_critic(raw_config({**overrides_of(combo), "ppo.use_critic": v}))
                            for v in (True, False))
    if with_critic != without:
        read.add("ppo.use_critic")
    return frozenset(read)


def canonical(combo: dict) -> tuple:
    dims = {**ADVANTAGE_DIMS, **LENGTH_DIMS}
    read = read_dims(combo)
    return tuple((d, combo[d] if d in read else dims[d][0]) for d in dims)


def samples_per_prompt(combo: dict) -> int:
    """K = 2 where the advantage compares a prompt's samples (grpo, leave-one-out), else 1 (13x fewer outcomes)."""
    loo = "algorithm.baseline" in read_dims(combo) and combo["algorithm.baseline"] == "leave_one_out"
    return 2 if combo["algorithm.name"] == "grpo" or loo else 1


def name_of(combo: dict) -> str:
    read = read_dims(combo)
    return ",".join(f"{k.split('.')[-1]}={v}" for k, v in combo.items() if k in read and (
        k in ADVANTAGE_DIMS or v != {**ADVANTAGE_DIMS, **LENGTH_DIMS}[k][0]))


def advantage_combinations() -> list[dict]:
    """The cross product of ADVANTAGE_DIMS with unread dimensions collapsed, length dimensions at their first value."""
    seen, combos = set(), []
    for values in itertools.product(*ADVANTAGE_DIMS.values()):
        combo = {**dict(zip(ADVANTAGE_DIMS, values)), **{d: v[0] for d, v in LENGTH_DIMS.items()}}
        key = canonical(combo)
        if key not in seen:
            seen.add(key)
            combos.append(dict(key))
    return combos


TIER1 = advantage_combinations()


def pairs_of(combo: dict) -> set:
    """The (dimension, value) pairs of a combination that involve a length dimension, both read."""
    read = sorted(read_dims(combo))
    return {((d1, combo[d1]), (d2, combo[d2])) for d1, d2 in itertools.combinations(read, 2)
            if d1 in LENGTH_DIMS or d2 in LENGTH_DIMS}


def targets_of(combo: dict) -> set:
    """What a T = 2 row shows: each of its pairs occurs in an accepted combination, and, when the claim for the row
    is exact, that the pair can follow its objective exactly."""
    pairs = pairs_of(combo)
    exact = claim(raw_config(overrides_of(combo)), samples_per_prompt(combo), 2).exact
    return {("accepted", p) for p in pairs} | ({("exact", p) for p in pairs} if exact else set())


def covering_rows() -> list[dict]:
    """Accepted combinations that show every target of targets_of(any accepted combination), chosen greedily by
    targets per enumerated outcome (13^K of them at T = 2)."""
    candidates = [{**base, **dict(zip(LENGTH_DIMS, values))} for base in TIER1 if refusal(base) is None
                  for values in itertools.product(*LENGTH_DIMS.values())]
    targets = [targets_of(c) for c in candidates]
    outcomes = [13 ** samples_per_prompt(c) for c in candidates]
    uncovered, rows = set().union(*targets), []
    while uncovered:
        best = max(range(len(candidates)), key=lambda i: len(targets[i] & uncovered) / outcomes[i])
        rows.append(candidates[best])
        uncovered -= targets[best]
    return rows


TIER2 = covering_rows()


def case_of(combo: dict, T: int, K: int | None = None) -> Case:
    return Case(T=T, B=1, K=K or samples_per_prompt(combo), overrides=overrides_of(combo))


def measure_claim(config, setup, case: Case, per_token: bool) -> tuple[Claim, float, float, float]:
    c = claim(config, case.K, case.T)
    rewards = reward_table(case.B, len(all_completions(case.T)))
    credit = prefix_credit(rewards, case.T) if per_token else None
    expected, total = expected_loss_gradient(config, setup, case, rewards, credit)
    assert abs(total - 1.0) < 1e-6
    objective = claimed_gradient(config, setup, c, rewards, case.T, case.B)
    return (c, *cosine_and_relative_error(expected, objective), objective.norm().item())


def check_row(combo: dict, T: int, K: int | None, setup, critic_setup) -> None:
    case = case_of(combo, T, K)
    expected_error = refusal(combo)
    if expected_error is not None:
        with pytest.raises(ConfigError, match=expected_error):
            config_for(case)
        return
    config = config_for(case)
    chosen = critic_setup if get_algorithm(config).uses_critic(config) else setup
    c, cosine, relative_error, norm = measure_claim(config, chosen, case, config.reward.per_token)
    print(f"{'exact' if c.exact else 'biased: ' + '; '.join(c.why_biased)}: cosine {cosine:.7f}, relative error "
          f"{relative_error:.2e}, |grad J| {norm:.3g}")
    assert norm > 1e-3, "grad J is ~0: the comparison would say nothing"
    matches = cosine >= COSINE_MIN and relative_error <= RELATIVE_ERROR_MAX
    assert matches == c.exact, f"claimed {'exact' if c.exact else 'biased'}, measured cosine {cosine:.6f}, " \
                               f"relative error {relative_error:.2e}"


@pytest.mark.parametrize("combo", TIER1, ids=[name_of(c) for c in TIER1])
def test_every_advantage_combination_follows_its_claim_or_is_refused(combo, setup, critic_setup):
    check_row(combo, T=1, K=2, setup=setup, critic_setup=critic_setup)


@pytest.mark.parametrize("combo", TIER2, ids=[name_of(c) for c in TIER2])
def test_every_pair_with_a_length_option_follows_its_claim(combo, setup, critic_setup):
    check_row(combo, T=2, K=None, setup=setup, critic_setup=critic_setup)


def test_the_covering_array_covers_every_pair_and_only_accepted_rows():
    needed = set().union(*(targets_of({**base, **dict(zip(LENGTH_DIMS, v))}) for base in TIER1
                           if refusal(base) is None for v in itertools.product(*LENGTH_DIMS.values())))
    assert needed == set().union(*(targets_of(row) for row in TIER2))
    assert {d for (_, ((d, _), _)) in needed} | {d for (_, (_, (d, _))) in needed} == {*ADVANTAGE_DIMS, *LENGTH_DIMS}
    assert all(refusal(row) is None for row in TIER2)
    assert len(TIER1) == len({canonical(c) for c in TIER1})


# ---------------------------------------------------------------- grpo + KL: the gradient scales with beta

BETAS = (1e-3, 1e-2, 1e-1)


def constant_reward_gradient(config, setup, case: Case) -> torch.Tensor:
    """E[grad L] with the same task reward for every completion: only the KL term can move the policy."""
    rewards = torch.full((case.B, len(all_completions(case.T))), 0.5)
    expected, total = expected_loss_gradient(config, setup, case, rewards)
    assert abs(total - 1.0) < 1e-6
    return expected


def per_beta(overrides: dict, setup) -> list[torch.Tensor]:
    """E[grad L] / beta for each of BETAS (T = 1, K = 2)."""
    out = []
    for beta in BETAS:
        case = Case(T=1, B=1, K=2, overrides={**overrides, "kl.coef": beta})
        out.append(constant_reward_gradient(config_for(case), setup, case) / beta)
    return out


def spread(values: list[torch.Tensor]) -> float:
    """max_i ||v_i - v_last|| / ||v_last||: 0 when E[grad L] is exactly proportional to beta."""
    return max(((v - values[-1]).norm() / values[-1].norm()).item() for v in values)


GRPO_KL = [(scale, mode, reduction) for scale in GRPO_SCALES for mode in KL_MODES for reduction in LOSS_REDUCTIONS]


@pytest.mark.parametrize("scale, mode, reduction", GRPO_KL, ids=[",".join(x) for x in GRPO_KL])
def test_grpo_kl_gradient_is_proportional_to_beta_or_refused(scale, mode, reduction, setup):
    """With a constant task reward every accepted grpo + KL setting moves the policy by beta * grad KL: between
    beta = 1e-3 and 1e-1, E[grad L] / beta is the same within 1 % (measured: to rounding)."""
    overrides = {"algorithm.name": "grpo", "grpo.scale_rewards": scale, "kl.mode": mode,
                 "algorithm.loss_reduction": reduction}
    expected_error = refusal({"algorithm.name": "grpo", "kl": mode, "grpo.scale_rewards": scale})
    if expected_error is not None:
        with pytest.raises(ConfigError, match=expected_error):
            config_for(Case(overrides={**overrides, "kl.coef": 0.1}))
        return
    scaled = per_beta(overrides, setup)
    assert scaled[-1].norm() > 1e-3
    assert spread(scaled) <= 0.01, f"E[grad L] / beta varies by {spread(scaled):.3f} across beta = {BETAS}"


def force_kl_past_validation(overrides: dict, setup, scale: str) -> list[torch.Tensor]:
    """E[grad L] / beta of grpo with beta * KL in the reward and scale_rewards `scale`, the config built with
    scale_rewards none and the scale swapped in past validation."""
    out = []
    for beta in BETAS:
        case = Case(T=1, B=1, K=2, overrides={**overrides, "kl.coef": beta})
        valid = config_for(case)
        config = dataclasses.replace(valid, grpo=dataclasses.replace(valid.grpo, scale_rewards=scale))
        out.append(constant_reward_gradient(config, setup, case) / beta)
    return out


@pytest.mark.parametrize("scale", ["group", "batch"])
def test_why_grpo_refuses_kl_in_the_reward_with_a_std(scale, setup):
    """Forced past validation, grpo divides beta * KL by the std of the samples' returns: E[grad L] hardly depends
    on beta (at beta = 1e-3 it is ~100x the size of beta * grad KL, as the audit found)."""
    scaled = force_kl_past_validation({"algorithm.name": "grpo", "grpo.scale_rewards": "none", "kl.mode": "reward"},
                                      setup, scale)
    ratio = (scaled[0].norm() / scaled[-1].norm()).item()
    print(f"||E grad L / beta|| at beta = 1e-3 over that at 1e-1: {ratio:.1f}")
    assert ratio > 10


def test_whitening_rescales_a_kl_in_the_reward_as_documented(setup):
    """Whitening (accepted, as TRL's PPO does) divides every advantage by the batch's std: when the task reward does
    not vary, beta no longer sets the step's size (docs/algorithms.md says so)."""
    scaled = per_beta({"algorithm.baseline": "leave_one_out", "algorithm.whiten_advantages": True,
                       "kl.mode": "reward"}, setup)
    assert spread(scaled) > 1.0


# ---------------------------------------------------------------- dynamic sampling: dropped groups have A = 0

DS_DIMS = {**ADVANTAGE_DIMS, "algorithm.gamma": [1.0, 0.8], "reward.per_token": [False, True]}
GROUP_0 = (0, 2, 6)  # completions of lengths 1, 2 (ends with EOS) and 2 (truncated): their returns may differ
GROUP_1 = (3, 0, 9)


def ds_combinations() -> list[dict]:
    seen, combos = set(), []
    for values in itertools.product(*DS_DIMS.values()):
        combo = {**{d: v[0] for d, v in LENGTH_DIMS.items()}, **dict(zip(DS_DIMS, values))}
        key = canonical(combo)
        if key not in seen:
            seen.add(key)
            combos.append(dict(key))
    return combos


def zero_advantage_expected(combo: dict) -> bool:
    """The documented rule: dropped groups have A = 0 exactly for grpo or the leave-one-out baseline (no critic, no
    whitening), with gamma = 1, no per-token credit and no KL in the reward."""
    read = read_dims(combo)
    centred = combo["algorithm.name"] == "grpo" or (
        "algorithm.baseline" in read and combo["algorithm.baseline"] == "leave_one_out"
        and not combo["algorithm.whiten_advantages"])
    return centred and combo["algorithm.gamma"] == 1.0 and not combo["reward.per_token"] and combo["kl"] != "reward"


@pytest.fixture(scope="module")
def scoring_world():
    """A policy, its reference and every completion of T = 2 tokens for both prompts (K = 3)."""
    policy = build_policy()
    return policy, reference_of(policy), completion_table(policy, PROMPTS, all_completions(2), 2, 1.0)


def constant_group_advantages(config, world, seed: int) -> torch.Tensor:
    """The advantages (K, T) llm_pg gives group 0, whose K = 3 task rewards are all equal (a random value), next to
    a group 1 of different rewards; a critic's values, per-token credit and the greedy rewards are random too."""
    from llm_pg.rollout.reference import Reference

    policy, reference, table = world
    g = torch.Generator().manual_seed(seed)
    table = dataclasses.replace(table, values=torch.randn(table.completion_ids.shape, generator=g)
                                * table.completion_mask)
    rollout = joint_rollout(table, GROUP_0 + GROUP_1, 3)
    rewards = torch.randn(2, len(all_completions(2)), generator=g, dtype=torch.float64).float()
    rewards[0] = torch.randn(1, generator=g).item() * 3  # group 0: one value for every completion
    R = rewards[rollout.group, torch.tensor(GROUP_0 + GROUP_1)]
    credit = prefix_credit(rewards, 2, seed)[rollout.group, torch.tensor(GROUP_0 + GROUP_1)] \
        if config.reward.per_token else adv.terminal_rewards(R, rollout.completion_mask)
    kl = KLPenalty.from_config(config.kl, config.kl.coef) if config.kl.coef > 0 else None
    baseline = adv.BaselineInputs(3, adv.MovingAverageBaseline(0.9, value=0.3), torch.randn(2, generator=g))
    scored = score_rollout(config, rollout, RolloutRewards(R, {}, credit), Reference(reference) if kl else None, kl,
                           baseline, get_algorithm(config).uses_critic(config))
    return scored.advantages[:3]


DS = ds_combinations()


@pytest.mark.parametrize("combo", DS, ids=[name_of(c) for c in DS])
def test_dynamic_sampling_is_accepted_exactly_when_dropped_groups_have_zero_advantage(combo, scoring_world):
    """Accepted: the group it would drop gets A = 0 exactly on every token (5 random reward values). Refused: one
    line naming algorithm.dynamic_sampling (or the KL-in-reward refusal), and the advantage really is not 0."""
    case = Case(T=2, B=2, K=3, overrides={**overrides_of(combo), "algorithm.dynamic_sampling": True})
    zero = zero_advantage_expected(combo)
    if zero and refusal(combo) is None:
        config = config_for(case)
        for seed in range(5):
            assert torch.equal(constant_group_advantages(config, scoring_world, seed), torch.zeros(3, 2))
        return
    with pytest.raises(ConfigError, match=refusal(combo) or r"^algorithm\.dynamic_sampling: drops groups"):
        config_for(case)
    valid = config_for(dataclasses.replace(case, overrides={**case.overrides, "algorithm.dynamic_sampling": False,
                                                            **({"kl.mode": "loss"} if refusal(combo) else {})}))
    config = dataclasses.replace(valid, kl=dataclasses.replace(valid.kl, mode=KL_SETTINGS[combo["kl"]].get(
        "kl.mode", valid.kl.mode)))
    nonzero = any(constant_group_advantages(config, scoring_world, seed).abs().max() > 0 for seed in range(5))
    assert nonzero, "refused, yet the dropped group's advantages are 0"


def test_an_ulp_does_not_leak_into_equal_groups():
    """sum / K of K equal floats can miss the value by an ulp; equal groups still get exactly 0 (K = 2 .. 8)."""
    g = torch.Generator().manual_seed(0)
    for K in range(2, 9):
        values = (torch.randn(200, generator=g) * 10).repeat_interleave(K)  # 200 groups of K equal values
        assert torch.equal(adv.leave_one_out_baseline(values, K), values)
        for scale in GRPO_SCALES:
            assert torch.equal(adv.group_scaled_advantages(values, K, scale), torch.zeros_like(values))
