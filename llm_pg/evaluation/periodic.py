"""Evaluation around and during training: test split before/after, validation every N steps, the best policy
and a reward-hacking check.

The trainer holds one `TrainingEvaluator` and calls it at three points (see trainer.train):

    evaluator = TrainingEvaluator(config, run)           # before the first step
    evaluator.evaluate_test("eval_before")               # eval_before.json / .jsonl
    stop = evaluator.after_step(step, metrics, metrics_log)   # after each step's metrics are logged
    evaluator.evaluate_test("eval_after")                # eval_after.json / .jsonl

Its state (evaluation history, best score, the hacking check) lives in run.evaluator_state, which every checkpoint
saves, so --resume continues it. The trainer writes the report and pushes to the Hub; the completions table is
fed from the scored rollout (tracking.CompletionsLog).

The main process evaluates while the others wait, except when the policy's parameters are sharded (DeepSpeed
ZeRO-3, FSDP): generation then needs every process (see llm_pg/models/sharding.py), so all of them generate the same
evaluation in lockstep and the main one alone writes files and decides.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import torch

from llm_pg.data.prompts import load_examples
from llm_pg.evaluation.heldout import evaluate_split, raw_reward_mix
from llm_pg.evaluation.meaning import MEANING_METRICS, load_meaning_metrics
from llm_pg.evaluation.metrics import LOWER_IS_BETTER
from llm_pg.models.lora import is_lora
from llm_pg.models.memory import release_freed_memory
from llm_pg.models.sharding import full_state_dict, gathered_for_generation, sharding_of
from llm_pg.rewards.spec import check_reward_config
from llm_pg.rollout.reference import Reference

logger = logging.getLogger(__name__)
BEST_DIR = "best"


class RewardHackingDetector:
    """Fires when the training reward rose while the held-out metric fell, `patience` evaluations in a row.

    A policy that games its reward (Skalse et al. 2022, https://arxiv.org/abs/2209.13085) shows exactly this:
    the reward it is trained on keeps improving while the task metric on data it never trains on gets worse.
    The training reward is the mean over the steps since the previous evaluation of reward/raw (logged when the
    reward is normalized or clipped), else of reward/mean.
    """

    def __init__(self, patience: int, lower_is_better: bool = False):
        self.patience, self.sign = patience, -1.0 if lower_is_better else 1.0
        self.previous_reward: float | None = None
        self.previous_metric: float | None = None
        self.streak = 0

    def update(self, train_reward: float, metric: float) -> bool:
        """Record one evaluation; True when the streak has reached `patience` (and at each further one)."""
        if self.previous_reward is not None:
            diverging = train_reward > self.previous_reward and self.sign * (metric - self.previous_metric) < 0
            self.streak = self.streak + 1 if diverging else 0
        self.previous_reward, self.previous_metric = train_reward, metric
        return self.patience > 0 and self.streak >= self.patience

    def state_dict(self) -> dict:
        return {"previous_reward": self.previous_reward, "previous_metric": self.previous_metric,
                "streak": self.streak}

    def load_state_dict(self, state: dict) -> None:
        self.previous_reward, self.previous_metric = state["previous_reward"], state["previous_metric"]
        self.streak = state["streak"]


def validation_examples(config, tokenizer) -> list:
    """The prompts of the periodic validation: evaluation.validation_samples of them (else data.max_eval_samples)."""
    limit = config.evaluation.validation_samples or config.data.max_eval_samples
    return load_examples(config.data, config.data.validation_split, tokenizer, limit)


def watched_metric(evaluation, reward_types: list[str], meaning_on: bool, has_references: bool) -> str:
    """The metric the reward-hacking check compares with the training reward (evaluation.hacking_metric): 'auto'
    is embedding_similarity -- a metric of meaning that an overlap reward (ROUGE, BLEU, chrF) never optimized, so
    a policy that games its reward shows as reward up, meaning down -- when it is measured and no reward component
    is an embedding similarity itself; else evaluation.metric."""
    if evaluation.hacking_metric != "auto":
        return evaluation.hacking_metric
    if meaning_on and has_references and "embedding" not in reward_types:
        return "embedding_similarity"
    return evaluation.metric


def training_reward(metrics: dict) -> float:
    """The step's reward as the hacking check reads it: reward/raw when the reward is shaped (normalize/clip; a
    normalized reward hovers around 0 and cannot keep rising), else reward/mean."""
    return metrics.get("reward/raw", metrics["reward/mean"])


def save_best_policy(model, tokenizer, path: Path, info: dict, state_dict: dict | None = None) -> None:
    """Policy + value head (when the model has one) + tokenizer + best.json (step, metric, scores), renamed into
    place together by checkpoint.save_model."""
    from llm_pg.runs.checkpoint import save_model

    save_model(model, tokenizer, path, state_dict, {"best.json": json.dumps(info, indent=1)})


class TrainingEvaluator:
    """Everything the training loop evaluates; every file is written by the main process only."""

    def __init__(self, config, run):
        self.config, self.run, e = config, run, config.evaluation
        self.main = run.accelerator.is_main_process
        self.sharding = sharding_of(run.accelerator)
        self.generates = self.main or self.sharding.parameters  # sharded weights: every process generates
        self.reward_mix = raw_reward_mix(run.reward_mix)  # held-out scores: the unshaped reward
        # loaded now when it will be used: a missing validation split is refused at set-up, not at step eval_every
        self.validation = validation_examples(config, run.tokenizer) \
            if self.generates and e.eval_every > 0 else None
        self.metric, self.lower_is_better = e.metric, e.metric in LOWER_IS_BETTER
        self.state = {"history": [], "best": None, "reward_sum": 0.0, "reward_steps": 0, "hacking_warned": False,
                      "since_best": 0}
        evaluating = e.before_training or e.after_training or e.eval_every > 0
        # sharded weights: every process evaluates, and a LoRA reference runs through the sharded policy
        self.reference = self._perplexity_reference() if evaluating and self.generates else None
        self.reference_loader = self._perplexity_loader() if evaluating and self.generates and \
            self.reference is None else None
        # a metric of meaning that training never optimized: embedding_similarity, bertscore_f1 (evaluation/meaning.py)
        self.meaning = load_meaning_metrics(e.meaning_encoder, e.metric in MEANING_METRICS) \
            if evaluating and self.generates else None
        reward_types = [spec.type for spec in check_reward_config(config.reward)]
        self.watched = watched_metric(e, reward_types, self.meaning is not None,
                                      any(x.references for x in run.train_examples[:16]))
        self.detector = RewardHackingDetector(e.hacking_patience, self.watched in LOWER_IS_BETTER)
        self.state["hacking_metric"] = self.watched
        if run.evaluator_state:  # resumed: continue the history, the best score and the hacking check
            saved = dict(run.evaluator_state)
            self.detector.load_state_dict(saved.pop("detector"))
            self.state.update(saved)
            if self.main:
                self._drop_a_lost_best()

    def _perplexity_reference(self):
        """The perplexity model when it is held anyway: the KL reference, or the LoRA policy with its adapters off;
        else None (a model of its own, which `_perplexity_loader` loads for each evaluation)."""
        if self.config.evaluation.reference_model != "start" or self.sharding.zero3:  # (zero3: the loader says)
            return None
        if self.run.reference is not None:  # the KL reference is the starting policy already
            return self.run.reference
        policy = self.run.accelerator.unwrap_model(self.run.model)
        if is_lora(policy):  # the start is the policy with its adapters off: no second model
            return Reference(policy, adapters_off=True, logits_chunk_tokens=self.config.training.logits_chunk_tokens)
        return None

    def _perplexity_loader(self):
        """A function that loads the perplexity model (evaluation.reference_model: the starting policy from
        model.name_or_path, or another model), or None. It is loaded for each evaluation and freed after it, not
        held through the updates: a second copy of the model (0.54 GB for SmolLM2-135M) off the update's peak, for a
        load per evaluation."""
        choice = self.config.evaluation.reference_model
        if choice == "none":
            return None
        if self.sharding.zero3:  # any copy loaded now would be partitioned too (transformers loads under zero.Init)
            logger.warning("evaluation.reference_model: no perplexity under DeepSpeed ZeRO-3 (the reference would "
                           "be partitioned); use deepspeed_zero2.yaml or fsdp.yaml to score it")
            return None
        from llm_pg.models.policy import load_policy

        model_cfg = self.config.model if choice == "start" else dataclasses.replace(
            self.config.model, name_or_path=choice, gguf_file=None)
        device = self.run.accelerator.device

        def load():
            # building a model can draw from the global RNG (tied or missing weights are initialized before they are
            # replaced): a load must leave the run's sampling stream where it was, as the copy held before did
            with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
                return load_policy(model_cfg).eval().requires_grad_(False).to(device)

        return load

    def _evaluate(self, examples, output: Path | None, desc: str) -> dict:
        reference = self.reference if self.reference_loader is None else self.reference_loader()
        try:
            with gathered_for_generation(self.run.accelerator, self.run.model) as policy, \
                    self.run.accelerator.autocast():
                scores, _ = evaluate_split(self.config, policy, self.run.tokenizer, examples, self.reward_mix,
                                           reference, output if self.main else None, desc, self.meaning)
        finally:
            del reference  # a loaded perplexity model goes now, with the evaluation's other tensors
            release_freed_memory(collect=self.reference_loader is not None)
        return scores

    def evaluate_test(self, name: str) -> dict:
        """The test split on the main process (the others wait); writes <run_dir>/<name>.json and .jsonl."""
        scores = {}
        if self.generates:
            scores = self._evaluate(self.run.test_examples, self.run.run_dir / f"{name}.json", name)
        if self.main:
            logger.info("%s: %s", name, {k: round(v, 4) for k, v in scores.items() if isinstance(v, float)})
        self.run.accelerator.wait_for_everyone()
        return scores

    def after_step(self, step: int, metrics: dict, metrics_log) -> bool:
        """Validation evaluation when due; True when training should stop."""
        e = self.config.evaluation
        self.state["reward_sum"] += training_reward(metrics)
        self.state["reward_steps"] += 1
        stop = False
        if e.eval_every > 0 and (step % e.eval_every == 0 or step == self.config.training.max_steps):
            if self.generates:
                stop = self._validate(step, metrics_log)
            stop = self._broadcast(stop)
        self.run.evaluator_state = {**self.state, "detector": self.detector.state_dict()}
        return stop

    def _validate(self, step: int, metrics_log) -> bool:
        if self.validation is None:
            self.validation = validation_examples(self.config, self.run.tokenizer)
        scores = self._evaluate(self.validation, None, f"validation@{step}")
        numeric = {k: v for k, v in scores.items() if isinstance(v, (int, float)) and k != "num_samples"}
        metrics_log.log(step, {f"eval/{k}": v for k, v in numeric.items()})
        self.state["history"].append({"step": step, **numeric})
        value = numeric[self.metric]
        best = self.state["best"]
        improved = best is None or (value < best["value"] if self.lower_is_better else value > best["value"])
        if self.sharding.parameters:  # every process gathers the weights to save: all follow the main one
            improved = self._broadcast(improved)
        if improved:
            self.state["best"] = {"step": step, "metric": self.metric, "value": value}
        self.state["since_best"] = 0 if improved else self.state.get("since_best", 0) + 1
        if improved and self.config.evaluation.save_best:
            weights = full_state_dict(self.run.accelerator, self.run.model)  # every process, when sharded
            if self.main:
                save_best_policy(self.run.accelerator.unwrap_model(self.run.model), self.run.tokenizer,
                                 self.run.run_dir / BEST_DIR, {**self.state["best"], "scores": numeric}, weights)
                logger.info("best %s so far (%.4f) at step %d: saved %s", self.metric, value, step,
                            self.run.run_dir / BEST_DIR)
        if self.watched not in numeric:  # never the reward in its place: that is another check
            self._say_unmeasured(sorted(numeric))
            return self._patience_spent()
        return self._hacking_check(numeric[self.watched]) or self._patience_spent()

    def _drop_a_lost_best(self) -> None:
        """On resume: best/ must hold the best policy the checkpoint knows of. After a crash it may hold one that a
        step after the checkpoint saved (a step the resumed run repeats, or never reaches if it stops earlier): that
        policy is removed, so that final/ never ships it under the checkpoint's best step. The checkpoint's best
        policy itself was overwritten; a later better validation saves a new best/, else final/ is the last policy."""
        folder, best = self.run.run_dir / BEST_DIR, self.state["best"]
        if not folder.is_dir():
            return
        try:
            saved_step = json.loads((folder / "best.json").read_text())["step"]
        except (OSError, ValueError, KeyError, TypeError):
            saved_step = None  # the crash came between the weights and best.json
        if best is not None and saved_step == best["step"]:
            return
        shutil.rmtree(folder)
        logger.warning("resume: %s held the policy of step %s, which the checkpoint does not know of (saved after "
                       "it, before the crash); removed. The best validation %s so far is %s; a later better one "
                       "is saved to best/, else final/ is the last policy", folder, saved_step, self.metric,
                       "none" if best is None else f"{best['value']:.4f} at step {best['step']}")

    def _say_unmeasured(self, measured: list[str]) -> None:
        """Said once per run (the flag is checkpointed with the evaluator's state)."""
        if self.config.evaluation.hacking_patience and not self.state.get("hacking_unmeasured"):
            self.state["hacking_unmeasured"] = True
            logger.warning("evaluation.hacking_metric: '%s' is not measured on the validation split (a reference "
                           "metric on samples without references, or a metric that is not scored), so the "
                           "reward-hacking check is off; choose one of the measured %s", self.watched, measured)

    def _patience_spent(self) -> bool:
        """evaluation.early_stopping_patience evaluations in a row without a new best: stop training."""
        patience = self.config.evaluation.early_stopping_patience
        if patience and self.state["since_best"] >= patience:
            best = self.state["best"]
            logger.info("early stop: validation %s has not improved on %.4f (step %d) for %d evaluations "
                        "(evaluation.early_stopping_patience)", self.metric, best["value"], best["step"], patience)
            return True
        return False

    def _hacking_check(self, value: float) -> bool:
        """value: this validation's evaluation.hacking_metric (see watched_metric)."""
        train_reward = self.state["reward_sum"] / max(self.state["reward_steps"], 1)
        self.state["reward_sum"], self.state["reward_steps"] = 0.0, 0
        if self.detector.update(train_reward, value):
            self.state["hacking_warned"] = True
            logger.warning(
                "possible reward hacking: the training reward rose while validation %s fell for %d evaluations in a "
                "row (now %.4f); look at the samples in completions.jsonl / report.md%s", self.watched,
                self.detector.streak, value,
                "; stopping (evaluation.stop_on_hacking)" if self.config.evaluation.stop_on_hacking else
                ", or set evaluation.stop_on_hacking: true to stop such runs")
            return self.config.evaluation.stop_on_hacking
        return False

    def best_to_ship(self, last_step: int) -> dict | None:
        """The best validation evaluation ({step, metric, value}) when final/ is to hold that policy instead of the
        last one (evaluation.final_policy: best), else None: the last policy is the best, or there is no best/."""
        e, best = self.config.evaluation, self.state["best"]
        if e.final_policy != "best" or not (e.eval_every and e.save_best) or best is None or best["step"] == last_step:
            return None
        if self._never_moved():
            return None
        if self.sharding.parameters:  # the sharded policy cannot take the saved weights back in place
            logger.warning("evaluation.final_policy: best is not supported with sharded weights (DeepSpeed ZeRO-3, "
                           "FSDP); final/ is the last policy, best/ the best one")
            return None
        return best if (self.run.run_dir / BEST_DIR).is_dir() else None

    def _never_moved(self) -> bool:
        """Every validation evaluation gave the same evaluation.metric: the first one is 'best' only by its order,
        so the last policy is shipped instead (said once, with the reason)."""
        values = [h[self.metric] for h in self.state["history"] if self.metric in h]
        if len(values) < 2 or max(values) != min(values):
            return False
        steps = [h["step"] for h in self.state["history"]]
        logger.warning("evaluation.final_policy: best: validation %s was %.4g at every one of the %d evaluations "
                       "(steps %d..%d), so no policy was better than another; final/ holds the last policy, not step "
                       "%d's. A metric that never moves cannot see what training changes (e.g. a reward that scores "
                       "the same on every held-out sample): choose another evaluation.metric", self.metric, values[0],
                       len(values), steps[0], steps[-1], self.state["best"]["step"])
        return True

    def load_best(self) -> None:
        """Put best/'s weights into the live policy (main process: it alone evaluates and saves from here on)."""
        if self.main:
            from llm_pg.runs.checkpoint import load_saved_weights

            load_saved_weights(self.run.accelerator.unwrap_model(self.run.model), self.run.run_dir / BEST_DIR)
        self.run.accelerator.wait_for_everyone()

    def _broadcast(self, flag: bool) -> bool:
        if self.run.accelerator.num_processes == 1:
            return flag
        from accelerate.utils import broadcast_object_list

        return bool(broadcast_object_list([flag])[0])
