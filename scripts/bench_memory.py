"""Peak resident memory of training steps: the full (N, T, V) logits against training.logits_chunk_tokens.

    python scripts/bench_memory.py --model ../shared/models/tinystories-656k --set training.num_threads=1
    python scripts/bench_memory.py --steps 4                  # the demo's SmolLM2-135M (alone on the machine)
    python scripts/bench_memory.py --chunks 0 64 256 --no-trim

Each variant runs in a fresh process, because ru_maxrss is a process's peak: the config (default: the demo's, with
its evaluations off), set-up, then --steps training steps. One line per variant: the peak after set-up, the peak
after the steps, the resident memory at the end, and the mean seconds of a step and of its update. --no-trim turns
off the malloc_trim after each update and between its micro-batches (llm_pg/models/memory.py
release_freed_memory), to measure what it gives.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


def resident_gb() -> float:
    with open("/proc/self/statm") as f:  # pages: size resident ...
        return int(f.read().split()[1]) * resource.getpagesize() / 1e9


def run_variant(args) -> dict:
    """In this (fresh) process: set-up and --steps training steps with logits_chunk_tokens = args.chunk."""
    if args.no_trim:
        import llm_pg.training.rl
        import llm_pg.training.update

        llm_pg.training.rl.release_freed_memory = lambda *a, **k: False  # after each update
        llm_pg.training.update.release_freed_memory = lambda *a, **k: False  # between its micro-batches
    from llm_pg.config.schema import load_config
    from llm_pg.training.rl import setup_run, train_step

    with tempfile.TemporaryDirectory(prefix="bench_memory_") as out:
        overrides = [f"training.output_dir={out}", f"training.max_steps={args.steps}",
                     "evaluation.before_training=false", "evaluation.after_training=false", "evaluation.eval_every=0",
                     f"training.logits_chunk_tokens={args.chunk}", *args.set]
        if args.model:
            overrides.append(f"model.name_or_path={args.model}")
        config = load_config(args.config, overrides)
        run = setup_run(config)
        setup_peak = peak_gb()
        steps, updates = [], []
        for step in range(args.steps):
            start = time.perf_counter()
            metrics = train_step(config, run, step)
            steps.append(time.perf_counter() - start)
            updates.append(metrics["time/update_s"])
    return {"chunk": args.chunk, "trim": not args.no_trim, "setup_peak_gb": setup_peak, "peak_gb": peak_gb(),
            "resident_gb": resident_gb(), "step_s": sum(steps) / len(steps), "update_s": sum(updates) / len(updates)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--model", default=None, help="model.name_or_path instead of the config's")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--chunks", type=int, nargs="+", default=[0, 256],
                        help="training.logits_chunk_tokens of each variant (0: the full logits)")
    parser.add_argument("--no-trim", action="store_true", help="no malloc_trim after each update")
    parser.add_argument("--set", nargs="*", default=[], help="more section.key=value overrides")
    parser.add_argument("--chunk", type=int, default=None, help=argparse.SUPPRESS)  # one variant, in a child
    args = parser.parse_args()
    if args.chunk is not None:
        print(json.dumps(run_variant(args)), flush=True)
        return
    print(f"{'chunk':>6} {'trim':>5} {'set-up peak':>12} {'peak':>8} {'RSS end':>8} {'s/step':>7} {'s/update':>9}")
    for chunk in args.chunks:
        command = [sys.executable, __file__, "--chunk", str(chunk), "--config", args.config, "--steps",
                   str(args.steps), *(["--model", args.model] if args.model else []),
                   *(["--no-trim"] if args.no_trim else []), "--set", *args.set]
        out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            sys.exit(f"variant chunk={chunk} failed:\n{out.stderr[-3000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['chunk']:>6} {str(r['trim']):>5} {r['setup_peak_gb']:>9.3f} GB {r['peak_gb']:>5.3f} GB "
              f"{r['resident_gb']:>5.3f} GB {r['step_s']:>7.2f} {r['update_s']:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
