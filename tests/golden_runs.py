"""Golden runs: short fixed-seed runs of the real tinystories model that guard every behaviour-neutral change.

Each case is one command's work in miniature: RL training (every algorithm and baseline, both KL modes, the GRPO
family with DAPO's aggregation, clip-higher, dynamic sampling and masked truncation), SFT, reward-model training
(`llm-pg rm`) and the whole `llm-pg rlhf` pipeline. What each writes (its metrics without timings, held-out scores,
a summary of its final weights) is recorded in tests/golden/golden_runs.json, and tests/test_golden_runs.py reruns
every case and compares:

- bit for bit on a machine that has a record of its own (same torch, transformers and CPU: a record's
  `fingerprint`); the file keeps one record per machine the project is developed and tested on;
- within a relative and absolute tolerance of 1e-4 on any other machine, against the first record that has the
  case: another CPU's kernels round differently (an Intel Xeon and an AMD EPYC differ by ~1e-6 after one step of the
  same torch); strings, token counts and steps must still match exactly. Most cases draw the same tokens on both,
  but a long chaotic one need not: the rlhf pipeline (SFT, two reward models, then RL) drew other tokens at its
  third RL step on the EPYC than on the Xeon it was recorded on. Hence one record per machine.

The test never skips for versions: `make test` and CI install the pinned test environment (constraints.txt). A
change that is *meant* to change a run re-records, and says why in its own commit:

    python tests/golden_runs.py --record [CASE ...]   # needs ../shared (or LLM_PG_SHARED); default: every case

records this machine's runs and drops those cases from the other machines' records (they are stale now: those
machines compare with this record, within the tolerance, until someone records there). A change that keeps every
run as it was adds a machine's record without dropping anything:

    python tests/golden_runs.py --add-machine
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
GOLDEN_FILE = HERE / "golden" / "golden_runs.json"
TOLERANCE = 1e-4  # relative and absolute, on another machine than the record's

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
    # The GRPO family: group scaling with two iterations and clip-higher (the clip acts on the second), DAPO's token
    # mean with dynamic sampling, masked truncation and the soft overlong punishment, Dr. GRPO without scaling.
    "grpo_clip_higher": {"algorithm.name": "grpo", "ppo.epochs": 2, "ppo.clip_eps_high": 0.28,
                         "algorithm.loss_reduction": "sequence_token_mean", "kl.coef": 0.05, "kl.mode": "loss"},
    "grpo_dapo": {"algorithm.name": "grpo", "grpo.scale_rewards": "batch", "algorithm.loss_reduction": "token_mean",
                  "algorithm.dynamic_sampling": True, "algorithm.dynamic_sampling_max_rounds": 2,
                  "algorithm.mask_truncated_completions": True, "generation.num_samples": 3,
                  "generation.stop_strings": ["."], "generation.max_new_tokens": 12,
                  "reward.components": [{"name": "the", "function": f"{HERE / 'golden' / 'golden_rewards.py'}:mentions_the",
                                         "weight": 1.0}]},
    "dr_grpo": {"algorithm.name": "grpo", "grpo.scale_rewards": "none", "algorithm.loss_reduction": "fixed_token_mean",
                "reward.components": [{"name": "rougeL", "weight": 1.0},
                                      {"name": "overlong", "type": "soft_overlong_punishment", "weight": 1.0,
                                       "max_completion_len": 8, "soft_punish_cache": 4}]},
}
# The other commands, each run by its own function below.
OTHER_CASES = ("sft", "reward_model", "rlhf_pipeline")


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


def nested(dotted: dict) -> dict:
    """{"a.b": 1} -> {"a": {"b": 1}} (config/resume.py's unflatten)."""
    from llm_pg.config.resume import unflatten

    return unflatten(dotted)


# Left out of the record: wall-clock figures, and the sampler-trainer mismatch (mismatch/*), which measures float
# rounding itself (~1e-7, different on every CPU) from log-probs whose effects the losses already carry.
UNRECORDED = ("time/", "speed/", "mismatch/")
# Also left out: statistics derived from recorded scores and lengths after the runs (a reward model's accuracy by
# length stratum, the comparison's gains at matched length), added after the records were made on two machines; the
# scores they read are recorded, and tests/test_length_control.py checks them against hand computation. And the
# comparison's answer quality (pipelines/rlhf_quality.py), measured after the recorded comparison from its samples:
# it changes none of the recorded numbers, and tests/test_rlhf_quality.py checks it against hand computation.
# The gold-vs-KL frontier (pipelines/rlhf_frontier.py, rlhf.frontier_steps): absent with the setting empty, as in the
# recorded run; tests/test_rlhf_frontier.py checks it against compare on the saved samples and hand computation.
DERIVED = ("by_length", "matched_length", "quality", "frontier")


def without_derived(node):
    """`node` without the DERIVED keys, at any depth."""
    if isinstance(node, dict):
        return {k: without_derived(v) for k, v in node.items() if k not in DERIVED}
    return node


def read_jsonl(path: Path) -> list[dict]:
    """A metrics file without its wall-clock figures and rounding measurements (UNRECORDED)."""
    return [{k: v for k, v in json.loads(line).items() if not k.startswith(UNRECORDED) and "seconds" not in k}
            for line in path.read_text().splitlines()]


def weight_summary(folder: Path) -> dict:
    """Per tensor of a saved model: [sum, sum of squares] in float64, so a tolerance can compare weights."""
    from safetensors.torch import load_file

    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(file))
    return {name: [t.double().sum().item(), t.double().square().sum().item()] for name, t in sorted(tensors.items())}


def run_case(name: str, model_dir: Path, work: Path) -> dict:
    """Run one case in-process; what it wrote that the record compares."""
    from helpers import tiny_config_dict  # noqa: F401  (tests/ on sys.path: same conventions as the tests)

    runner = {"sft": run_sft, "reward_model": run_reward_model, "rlhf_pipeline": run_rlhf}.get(name, run_rl)
    return runner(name, model_dir, work)


def run_rl(name: str, model_dir: Path, work: Path) -> dict:
    """Train one RL case: its metrics (without timings), held-out scores and final weights."""
    from llm_pg.config.schema import config_from_dict
    from llm_pg.training.rl import train

    output_dir = work / name
    train(config_from_dict(nested({**base_overrides(model_dir, write_data(work / "stories.jsonl"), output_dir),
                                   **CASES[name]})))
    scores = {split: json.loads((output_dir / f"{split}.json").read_text())["scores"]
              for split in ("eval_before", "eval_after")}
    return {"metrics": read_jsonl(output_dir / "metrics.jsonl"), **scores,
            "weights": weight_summary(output_dir / "final")}


def run_sft(name: str, model_dir: Path, work: Path) -> dict:
    from llm_pg.config.schema import config_from_dict
    from llm_pg.training.sft import train_sft

    values = nested({**base_overrides(model_dir, write_data(work / "stories.jsonl"), work / name),
                     "sft.max_steps": 3, "sft.batch_size": 4, "sft.learning_rate": 3e-3})
    final = train_sft(config_from_dict(values), work / name)
    return {"metrics": read_jsonl(work / name / "sft_metrics.jsonl"), "weights": weight_summary(final)}


def write_pairs(folder: Path) -> Path:
    """Preference pairs on the stories: the chosen answer is the story's own next sentence, the rejected one
    another story's."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, indices in (("train", range(0, 12)), ("test", range(12, 20))):
        rows = [{"prompt": PROMPTS[i % 12], "chosen": REFERENCES[i % 12], "rejected": REFERENCES[(5 * i + 3) % 12]}
                for i in indices]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def rm_values(model_dir: Path, pairs: Path, output_dir: Path) -> dict:
    return {"model.name_or_path": str(model_dir), "training.num_threads": 1, "training.seed": 7,
            "training.mixed_precision": "no", "rm.source": str(pairs), "rm.output_dir": str(output_dir),
            "rm.use_chat_template": False, "rm.batch_size": 4, "rm.max_steps": 4, "rm.learning_rate": 3e-3,
            "rm.save_every": 2, "rm.bootstrap_resamples": 20}


def run_reward_model(name: str, model_dir: Path, work: Path) -> dict:
    from llm_pg.config.schema import config_from_dict
    from llm_pg.training.reward_model import train_reward_model

    out = work / name
    result = train_reward_model(config_from_dict(nested(rm_values(model_dir, write_pairs(work / "pairs"), out))))
    settings = json.loads(next((out / "final").glob("*settings*.json")).read_text())
    return {"metrics": read_jsonl(out / "rm_metrics.jsonl"),
            "evaluation": without_derived({k: v for k, v in result.items() if k not in ("final", "train_seconds")}),
            "settings": {k: v for k, v in settings.items() if k != "base_model"},
            "weights": weight_summary(out / "final")}


def run_rlhf(name: str, model_dir: Path, work: Path) -> dict:
    """The whole pipeline: data, SFT, proxy and gold reward models, RL from SFT, the comparison."""
    from llm_pg.config.schema import config_from_dict
    from llm_pg.pipelines.rlhf import run_pipeline

    out = work / name
    values = {**rm_values(model_dir, write_pairs(work / "pairs"), work / "unused"),
              "data.use_chat_template": False, "data.max_eval_samples": 4, "generation.num_samples": 2,
              "generation.max_new_tokens": 6, "sft.max_steps": 2, "sft.batch_size": 4, "sft.learning_rate": 1e-3,
              "rm.max_steps": 3, "kl.coef": 0.1, "training.max_steps": 3, "training.save_every": 2,
              "training.prompts_per_step": 2, "training.learning_rate": 1e-2, "evaluation.eval_every": 2,
              "evaluation.validation_samples": 4, "evaluation.meaning_encoder": "none",
              "evaluation.bootstrap_resamples": 20, "evaluation.batch_size": 8, "rlhf.output_dir": str(out),
              "rlhf.validation_pairs": 4, "rlhf.compare_samples": 2}
    run_pipeline(config_from_dict(nested(values)))
    comparison = json.loads((out / "comparison.json").read_text())
    return {"sft": read_jsonl(out / "sft" / "sft_metrics.jsonl"),
            "rm_proxy": read_jsonl(out / "rm_proxy" / "rm_metrics.jsonl"),
            "rm_gold": read_jsonl(out / "rm_gold" / "rm_metrics.jsonl"),
            "rl": read_jsonl(out / "rl" / "metrics.jsonl"), "comparison": without_derived(comparison),
            "weights": weight_summary(out / "rl" / "final")}


def all_cases() -> list[str]:
    return [*CASES, *OTHER_CASES]


def fingerprint() -> dict:
    """What decides the exact floats of a run: the library versions and the CPU whose kernels compute them."""
    import torch
    import transformers

    cpu = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        fields = dict(map(str.strip, line.split(":", 1)) for line in cpuinfo.read_text().splitlines() if ":" in line)
        cpu = " ".join(fields.get(k, "").strip() for k in ("vendor_id", "model name"))
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "cpu": cpu or platform.processor(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def read_records() -> list[dict]:
    """[{"fingerprint", "runs"}, ...], one per machine (a file of the older one-record form is read as one)."""
    golden = json.loads(GOLDEN_FILE.read_text()) if GOLDEN_FILE.exists() else {"records": []}
    return golden["records"] if "records" in golden else [golden]


def record_for(name: str, records: list[dict], here: dict) -> tuple[dict, bool, dict]:
    """(the recorded run of case `name`, whether it is this machine's own, the fingerprint it was made on)."""
    having = [r for r in records if name in r["runs"]]
    own = [r for r in having if r["fingerprint"] == here]
    chosen = (own or having)[0]
    return chosen["runs"][name], bool(own), chosen["fingerprint"]


def write_records(results: dict, here: dict, drop_elsewhere: bool) -> None:
    """Put `results` into this machine's record; with drop_elsewhere, remove those cases from the others."""
    records = read_records()
    mine = next((r for r in records if r["fingerprint"] == here), None)
    if mine is None:
        mine = {"fingerprint": here, "runs": {}}
        records.append(mine)
    mine["runs"].update(results)
    for other in records:
        if other is not mine and drop_elsewhere:
            other["runs"] = {k: v for k, v in other["runs"].items() if k not in results}
    GOLDEN_FILE.parent.mkdir(exist_ok=True)
    GOLDEN_FILE.write_text(json.dumps({"records": [r for r in records if r["runs"]]}, indent=1) + "\n")


def differences(want, have, exact: bool, where: str = "") -> list[str]:
    """Every place where `have` differs from the record `want`: numbers bit for bit (exact) or within TOLERANCE;
    everything else (keys, strings, steps, token counts) exactly."""
    if isinstance(want, dict) and isinstance(have, dict):
        if want.keys() != have.keys():
            return [f"{where}: keys {sorted(set(want) ^ set(have))} differ"]
        return [d for k in want for d in differences(want[k], have[k], exact, f"{where}.{k}")]
    if isinstance(want, list) and isinstance(have, list):
        if len(want) != len(have):
            return [f"{where}: {len(want)} entries recorded, {len(have)} now"]
        return [d for i, (w, h) in enumerate(zip(want, have)) for d in differences(w, h, exact, f"{where}[{i}]")]
    if isinstance(want, float) and isinstance(have, (int, float)) and not isinstance(have, bool) and not exact:
        if math.isnan(want) and math.isnan(have):
            return []
        if abs(want - have) <= TOLERANCE * (1 + abs(want)):
            return []
    elif json.dumps(want) == json.dumps(have):
        return []
    return [f"{where}: recorded {want!r}, now {have!r}"]


def main() -> None:
    import tempfile

    import torch

    from helpers import TINYSTORIES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="record this machine's runs of the cases, dropping "
                        "them from the other machines' records (a change meant to change them)")
    parser.add_argument("--add-machine", action="store_true", help="record this machine's runs of the cases and keep "
                        "the other machines' records (a change that keeps every run as it was)")
    parser.add_argument("cases", nargs="*", default=all_cases())
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: run_case(name, TINYSTORIES, Path(tmp)) for name in args.cases}
    if args.record or args.add_machine:
        write_records(results, fingerprint(), drop_elsewhere=args.record)
        print(f"recorded {len(results)} runs of {fingerprint()} in {GOLDEN_FILE}")
    else:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
