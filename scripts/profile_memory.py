"""Where the demo's memory goes: resident memory (RSS) after each stage of set-up and after each training step.

    python scripts/profile_memory.py                              # the demo's config, its default precision
    python scripts/profile_memory.py --precision no               # float32
    python scripts/profile_memory.py --mmap-threshold 262144      # glibc returns freed large blocks to the OS

Prints, per line, the RSS now and the peak so far (ru_maxrss), and the step's seconds. The floor of training is
16 bytes per parameter in float32 (weights, gradients, AdamW's two moments); the rest is the starting policy kept
for perplexity (evaluation.reference_model: start), the update's activations, the runtime, and memory that glibc's
allocator keeps after it was freed (compare the default with --mmap-threshold, which costs time: every large
tensor is then a fresh mapping). docs/memory.md reads the figures.
"""

from __future__ import annotations

import argparse
import ctypes
import resource
import sys
import tempfile
import time

import psutil


def report(tag: str, seconds: float | None = None) -> None:
    rss = psutil.Process().memory_info().rss / 1e9
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KB on Linux
    took = f"{seconds:6.2f} s" if seconds is not None else " " * 8
    print(f"{tag:28s} {took}  RSS {rss:5.2f} GB   peak {peak:5.2f} GB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--precision", default=None, help="training.mixed_precision (default: the config's)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--mmap-threshold", type=int, default=0, help="glibc M_MMAP_THRESHOLD in bytes (0: leave)")
    args = parser.parse_args()
    if args.mmap_threshold:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, args.mmap_threshold)  # M_MMAP_THRESHOLD: blocks this large are mapped, and unmapped on free
        libc.mallopt(-1, 1024 * 1024)  # M_TRIM_THRESHOLD: give back free heap tops above 1 MB
    from llm_pg.config.schema import load_config
    from llm_pg.evaluation.periodic import TrainingEvaluator
    from llm_pg.training.rl import setup_run, train_step

    report("imports")
    overrides = [f"training.output_dir={tempfile.mkdtemp()}", "evaluation.before_training=false"]
    if args.precision:
        overrides.append(f"training.mixed_precision={args.precision}")
    config = load_config(args.config, overrides)
    run = setup_run(config)
    report(f"set-up ({run.accelerator.mixed_precision})")
    TrainingEvaluator(config, run)  # holds the starting policy for perplexity, as training does
    report("evaluator")
    for step in range(args.steps):
        start = time.perf_counter()
        train_step(config, run, step)
        report(f"step {step + 1}", time.perf_counter() - start)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
