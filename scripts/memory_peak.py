"""What the live tensors of one training update are made of at their peak (torch.profiler's memory timeline).

    python scripts/memory_peak.py                                              # the demo's config
    python scripts/memory_peak.py --set training.gradient_accumulation_steps=2
    python scripts/memory_peak.py --model ../shared/models/tinystories-656k --set training.num_threads=1

Sets up the config's run (default: configs/demo.yaml with its evaluations off), runs one training step so that
AdamW's moments exist, then profiles the next step's update (`policy_update`) with torch.profiler's memory
profiling and prints, at the instant the update's live tensors peak, their size by the profiler's category:
parameters, optimizer state, inputs, temporaries, activations, gradients, autograd detail, unknown. Only tensors
the update touches are seen (a KL reference model's weights are not), and the process's resident memory is more
(Python, libraries, the allocator's freed blocks): `scripts/bench_memory.py` measures that.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CATEGORIES = ["parameters", "optimizer state", "inputs", "temporaries", "activations", "gradients",
              "autograd detail", "unknown"]  # torch.profiler._memory_profiler's order; the timeline's slot 0 unused


def profiled_update(config) -> list[int]:
    """Bytes by category (CATEGORIES order) at the peak of the second step's update."""
    import llm_pg.training.rl as rl

    run = rl.setup_run(config)
    rl.train_step(config, run, 0)
    update, peak = rl.policy_update, {}

    def profiled(*args, **kwargs):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True,
                                    record_shapes=True, with_stack=True) as prof:
            result = update(*args, **kwargs)
        with tempfile.TemporaryDirectory() as tmp:
            prof.export_memory_timeline(str(Path(tmp) / "timeline.json"), device="cpu")
            _, sizes = json.loads((Path(tmp) / "timeline.json").read_text())
        peak["sizes"] = max(sizes, key=sum)[1:]
        return result

    rl.policy_update = profiled
    try:
        rl.train_step(config, run, 1)
    finally:
        rl.policy_update = update
    return peak["sizes"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--model", default=None, help="model.name_or_path instead of the config's")
    parser.add_argument("--set", nargs="*", default=[], help="more section.key=value overrides")
    args = parser.parse_args()
    from llm_pg.config.schema import load_config

    with tempfile.TemporaryDirectory(prefix="memory_peak_") as out:
        overrides = [f"training.output_dir={out}", "training.max_steps=2", "evaluation.before_training=false",
                     "evaluation.after_training=false", "evaluation.eval_every=0", *args.set]
        if args.model:
            overrides.append(f"model.name_or_path={args.model}")
        sizes = profiled_update(load_config(args.config, overrides))
    print(f"live tensors at the update's peak: {sum(sizes) / 1e6:.3f} MB")
    for name, size in zip(CATEGORIES, sizes):
        print(f"  {name:16s} {size / 1e6:10.3f} MB")


if __name__ == "__main__":
    main()
