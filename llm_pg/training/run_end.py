"""The end of a run: which policy final/ holds, saving it, and publishing the run (report, Hub).

`run` is the trainer's Run and `evaluator` its periodic_eval.TrainingEvaluator (not imported: the trainer
imports this module).
"""

from __future__ import annotations

import json
import logging

from llm_pg.config.schema import TrainConfig
from llm_pg.models.lora import merge_lora
from llm_pg.models.sharding import full_state_dict
from llm_pg.runs.checkpoint import save_model

logger = logging.getLogger(__name__)


def choose_final_policy(config: TrainConfig, run, evaluator, last_step: int) -> dict:
    """evaluation.final_policy: the best validation policy replaces the live one (after the last policy's own test
    evaluation, eval_last.json), so that eval_after.json, final/ and the report are the policy validation chose."""
    best = evaluator.best_to_ship(last_step)
    if best is None:
        kept = evaluator.state.get("best") if config.evaluation.final_policy == "best" else None
        if kept is not None and kept["step"] == last_step:  # the best validation policy is the last one: say so
            return {"policy": "best", **kept, "last_step": last_step}
        return {"policy": "last", "step": last_step}
    if config.evaluation.after_training:
        run.results["eval_last"] = evaluator.evaluate_test("eval_last")
    evaluator.load_best()
    logger.info("final policy: the best validation %s (%.4f at step %d), not the last step's (%d); "
                "evaluation.final_policy=last keeps the last", best["metric"], best["value"], best["step"], last_step)
    return {"policy": "best", **best, "last_step": last_step}


def save_final(config: TrainConfig, run, shipped: dict) -> None:
    """<output_dir>/final: the chosen policy (merged when model.lora.merge_on_save), its tokenizer, and
    selected.json saying which policy it is (shipped: {"policy": "best" | "last", "step", ...})."""
    weights = full_state_dict(run.accelerator, run.model)  # every process, when the weights are sharded
    if run.accelerator.is_main_process:
        policy = run.accelerator.unwrap_model(run.model)
        if config.model.lora.merge_on_save and config.model.lora.r > 0:  # in place: the policy's last use
            policy = merge_lora(policy)
        save_model(policy, run.tokenizer, run.run_dir / "final", weights,
                   {"selected.json": json.dumps(shipped, indent=1)})


def publish(config: TrainConfig, run) -> None:
    """The report (always), then the push when hub.push; main process only."""
    if run.accelerator.is_main_process:
        from llm_pg.reporting.report import write_run_report

        paths = write_run_report(run.run_dir)
        logger.info("report: %s", paths["html"])
        if config.hub.push:
            from llm_pg.reporting.hub import push_run

            push_run(run.run_dir, config.hub)
    run.accelerator.wait_for_everyone()
