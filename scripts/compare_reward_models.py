"""Two reward models on the same held-out pairs, overall and in each length stratum, paired.

    python scripts/compare_reward_models.py runs/rm_covariate runs/rm_bt [--resamples 2000] [--json out.json]

Each argument is an `llm-pg rm` output folder (its eval_scores.jsonl: every held-out pair's two scores). Prints a
markdown table: each model's accuracy (Wilson interval) on all pairs, on those whose chosen answer is the longer one
and on those where it is the shorter one, and A − B with the paired-bootstrap interval over that stratum's pairs and
the paired sign-flip p-value (llm_pg/evaluation/preference_accuracy.py, `compare_reward_models`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llm_pg.errors import LlmPgError
from llm_pg.evaluation.preference_accuracy import compare_reward_models

STRATA = (("all", "all pairs"), ("chosen_longer", "chosen answer longer"), ("chosen_shorter", "chosen answer shorter"))


def read_scores(folder: Path) -> list[dict]:
    path = folder / "eval_scores.jsonl"
    if not path.is_file():
        raise LlmPgError(f"{path} not found: give a folder written by `llm-pg rm` with held-out pairs "
                         "(rm.eval_split or rm.eval_fraction)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def table(result: dict, name_a: str, name_b: str) -> str:
    def acc(s: dict) -> str:
        return f"{s['accuracy']:.3f} [{s['ci'][0]:.3f}, {s['ci'][1]:.3f}]"

    lines = [f"| pairs | n | {name_a} | {name_b} | A − B [95 % paired bootstrap] | p |", "|---|---|---|---|---|---|"]
    for key, label in STRATA:
        part = result[key]
        if part is None:
            lines.append(f"| {label} | 0 | | | | |")
            continue
        d = part["a_minus_b"]
        lines.append(f"| {label} | {part['pairs']} | {acc(part['a'])} | {acc(part['b'])} | {d['difference']:+.3f} "
                     f"[{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] | {d['p_value']:.3g} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="reward model A: an `llm-pg rm` output folder")
    parser.add_argument("b", type=Path, help="reward model B, evaluated on the same held-out pairs")
    parser.add_argument("--resamples", type=int, default=2000, help="paired-bootstrap resamples")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    try:
        result = compare_reward_models(read_scores(args.a), read_scores(args.b), args.resamples)
    except LlmPgError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(table(result, f"A: {args.a.name}", f"B: {args.b.name}"))
    if args.json is not None:
        args.json.write_text(json.dumps({"a": str(args.a), "b": str(args.b), **result}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
