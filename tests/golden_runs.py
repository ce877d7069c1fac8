"""Golden runs: short fixed-seed training runs of the real tinystories model, one per algorithm and baseline.

Their `metrics.jsonl` (timings left out) and held-out scores are recorded in tests/golden/golden_runs.json; the
test (tests/test_golden_runs.py) reruns them and requires every number to be bit-identical, so a change meant to
be behaviour-neutral (a refactor) cannot silently change what training computes. A change that is *meant* to
change a run re-records them, and says why in its commit:

    python tests/golden_runs.py --record [CASE ...]   # needs ../shared (or LLM_PG_SHARED); default: every case

The record names the torch and transformers versions it was made with: other versions may take another random
path (a different kernel rounds differently, a different token is drawn), so the test skips there with that reason.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
GOLDEN_FILE = HERE / "golden" / "golden_runs.json"

PROMPTS = ["Once upon a time, there was a little girl named Lily. ", "Tom had a big red ball. ",
           "The sun was hot and the dog was sad. ", "One day, a bird flew to the tree. ",
           "Sam liked to play in the park. ", "Mom made a cake for Tim. ", "The cat saw a fish in the pond. ",
           "Anna found a shiny stone. ", "The boy wanted to fly a kite. ", "A small frog lived by the river. ",
           "Ben and Mia went to the beach. ", "The old tree was very tall. "]
REFERENCES = ["She liked to play with her doll.", "He liked to throw it to his dog.", "The dog wanted some water.",
              "The bird sang a happy song.", "He played on the slide.", "Tim was very happy.",
              "The cat wanted to catch the fish.", "She put it in her pocket.", "The wind was strong.",
              "The frog liked to jump.", "They built a big sand castle.", "Birds lived in the tree."]

# Each case: dotted overrides on top of BASE. Together they pass through every baseline, both critic paths, PPO's
# epochs and minibatches, both KL modes and estimators, the adaptive KL coefficient, gradient accumulation, token
# mean, the entropy bonus, per-token credit, reward normalization and the validation/best-policy machinery.
CASES = {
    "reinforce_none": {"algorithm.baseline": "none"},
    "reinforce_moving_average": {"algorithm.baseline": "moving_average"},
    "reinforce_leave_one_out": {"algorithm.baseline": "leave_one_out"},
    "reinforce_greedy": {"algorithm.baseline": "greedy"},
    "reinforce_extras": {"algorithm.loss_reduction": "token_mean", "algorithm.entropy_coef": 0.01,
                         "algorithm.whiten_advantages": True, "training.gradient_accumulation_steps": 2,
                         "reward.per_token": True, "reward.normalize": True},
    "actor_critic": {"algorithm.name": "actor_critic", "critic.gae_lambda": 0.95, "critic.learning_rate": 1e-3,
                     "algorithm.whiten_advantages": True},
    "ppo": {"algorithm.name": "ppo", "ppo.epochs": 2, "ppo.num_minibatches": 2},
    "ppo_critic": {"algorithm.name": "ppo", "ppo.use_critic": True, "ppo.epochs": 2, "ppo.num_minibatches": 1},
    "kl_reward_k1_adaptive": {"kl.coef": 0.1, "kl.mode": "reward", "kl.estimator": "k1", "kl.target": 0.5,
                              "kl.horizon": 100},
    "kl_loss_k3": {"kl.coef": 0.1, "kl.mode": "loss", "kl.estimator": "k3"},
}


def write_data(path: Path) -> Path:
    rows = [{"id": f"s{i}", "prompt": p, "reference": r} for i, (p, r) in enumerate(zip(PROMPTS, REFERENCES))]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def base_overrides(model_dir: Path, data_file: Path, output_dir: Path) -> dict:
    return {
        "model.name_or_path": str(model_dir),
        "data.source": str(data_file), "data.use_chat_template": False, "data.split_fractions": [0.5, 0.25, 0.25],
        "generation.num_samples": 2, "generation.max_new_tokens": 8,
        "reward.components": [{"name": "rougeL", "weight": 1.0}, {"name": "bleu", "weight": 0.5}],
        "training.output_dir": str(output_dir), "training.max_steps": 4, "training.prompts_per_step": 2,
        "training.learning_rate": 3e-3, "training.num_threads": 1, "training.lr_scheduler": "linear",
        "training.warmup_steps": 1, "training.seed": 7, "training.mixed_precision": "no",
        "evaluation.before_training": True, "evaluation.after_training": True, "evaluation.eval_every": 2,
        "evaluation.metric": "rougeL", "evaluation.meaning_encoder": "none",
        "evaluation.bootstrap_resamples": 10,
        "evaluation.final_policy": "last",  # eval_after: the last policy, as recorded (best: test_final_policy.py)
    }


def run_case(name: str, model_dir: Path, work: Path) -> dict:
    """Train one case in-process; its metrics (without timings) and held-out scores."""
    from helpers import tiny_config_dict  # noqa: F401  (tests/ on sys.path: same conventions as the tests)

    from llm_pg.config import config_from_dict
    from llm_pg.trainer import train

    output_dir = work / name
    values: dict = {}
    for key, value in {**base_overrides(model_dir, write_data(work / "stories.jsonl"), output_dir),
                       **CASES[name]}.items():
        node = values
        *sections, last = key.split(".")
        for part in sections:
            node = node.setdefault(part, {})
        node[last] = value
    train(config_from_dict(values))
    metrics = [{k: v for k, v in json.loads(line).items() if not k.startswith(("time/", "speed/"))}
               for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    scores = {split: json.loads((output_dir / f"{split}.json").read_text())["scores"]
              for split in ("eval_before", "eval_after")}
    return {"metrics": metrics, **scores}


def versions() -> dict:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}


def main() -> None:
    import tempfile

    import torch

    from helpers import TINYSTORIES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="write tests/golden/golden_runs.json")
    parser.add_argument("cases", nargs="*", default=list(CASES))
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: run_case(name, TINYSTORIES, Path(tmp)) for name in args.cases}
    if args.record:  # naming some cases re-records those and keeps the others
        runs = json.loads(GOLDEN_FILE.read_text())["runs"] if GOLDEN_FILE.exists() else {}
        GOLDEN_FILE.parent.mkdir(exist_ok=True)
        GOLDEN_FILE.write_text(json.dumps({"versions": versions(), "runs": {**runs, **results}}, indent=1) + "\n")
        print(f"recorded {len(results)} runs in {GOLDEN_FILE}")
    else:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
