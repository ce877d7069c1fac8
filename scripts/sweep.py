"""A small grid sweep judged on the VALIDATION split only (the test split stays untouched until the choice is made).

    python scripts/sweep.py --config configs/demo.yaml --name demo --jobs 2 \
        --grid training.learning_rate=3e-5,1e-5 --grid kl.coef=0,0.05,0.2 --output docs/sweeps.md

Each grid point trains with the config's own cadence of validation (evaluation.eval_every, validation_samples) and
no test evaluation; its metrics.jsonl keeps the validation curve.  The table (written between
`<!-- sweep:NAME -->` markers of --output) gives, per point: the validation metric at every evaluation (the
curve), its best evaluation (and the step), there the embedding similarity to the references and the mean words
per answer, the perplexity under the starting model at the best and the last evaluation, and the wall time.  A
finished point (its summary.json exists) is not run again.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def grid_points(grid: list[str]) -> list[list[str]]:
    """['a=1,2', 'b=x'] -> [['a=1', 'b=x'], ['a=2', 'b=x']]."""
    axes = []
    for spec in grid:
        key, _, values = spec.partition("=")
        axes.append([f"{key}={v}" for v in values.split(",")])
    return [list(p) for p in itertools.product(*axes)]


def point_name(point: list[str]) -> str:
    """['training.learning_rate=3e-5', 'kl.coef=0.05'] -> 'learning_rate=3e-5,coef=0.05'."""
    return ",".join(p.split("=")[0].split(".")[-1] + "=" + p.split("=", 1)[1] for p in point)


def run_point(config: str, point: list[str], out: Path, threads: int, extra: list[str]) -> dict:
    summary = out / "summary.json"
    if summary.is_file():
        return json.loads(summary.read_text())
    if _finished(out):  # trained by an earlier sweep whose driver stopped: collect it
        wall = (out / "metrics.jsonl").stat().st_mtime - (out / "config.yaml").stat().st_mtime
        return _summarize(out, point, wall)
    overrides = [*point, *extra, f"training.output_dir={out}", f"training.num_threads={threads}",
                 "evaluation.before_training=false", "evaluation.after_training=false", "evaluation.save_best=false",
                 "training.save_final_model=false", "--overwrite"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "llm_pg.cli", "train", "--config", config, *overrides], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=open(out.parent / f"{out.name}.log", "w"))
    return _summarize(out, point, time.perf_counter() - t0)


def _evaluations(out: Path) -> list[dict]:
    return [r for r in (json.loads(line) for line in open(out / "metrics.jsonl")) if any(
        k.startswith("eval/") for k in r)]


def _finished(out: Path) -> bool:
    """A run folder whose metrics reach the config's last step and that no run holds (no lock)."""
    import yaml

    if not (out / "metrics.jsonl").is_file() or (out / ".llm_pg.lock").exists() or not (out / "config.yaml").is_file():
        return False
    last = yaml.safe_load((out / "config.yaml").read_text())["training"]["max_steps"]
    return any(r["step"] == last for r in _evaluations(out))


def collected(out: Path) -> dict:
    """A point's summary, or for a run stopped before max_steps its curve so far (wall time from file times)."""
    if (out / "summary.json").is_file():
        return json.loads((out / "summary.json").read_text())
    import yaml

    config = yaml.safe_load((out / "config.yaml").read_text())
    history = _evaluations(out)
    wall = (out / "metrics.jsonl").stat().st_mtime - (out / "config.yaml").stat().st_mtime
    point = [f"training.learning_rate={config['training']['learning_rate']}", f"kl.coef={config['kl']['coef']}"]
    if config["kl"].get("mode", "reward") != "reward":
        point.insert(1, f"kl.mode={config['kl']['mode']}")
    if not history or history[-1]["step"] < config["training"]["max_steps"]:
        point.append(f"(stopped at step {history[-1]['step'] if history else 0} of {config['training']['max_steps']})")
    return {"point": point, "wall_s": wall, "history": history}


def _summarize(out: Path, point: list[str], wall: float) -> dict:
    result = {"point": point, "wall_s": wall, "history": _evaluations(out)}
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # 1.6 GB per point for a 135M model: keep the curve
    (out / "summary.json").write_text(json.dumps(result, indent=1))
    return result


def table(results: list[dict], metric: str) -> str:
    """Per point: the validation curve, its best evaluation, and there the metric of meaning, drift and length."""
    rows = [f"| point | {metric} at each evaluation | best (step) | embedding sim. at best | ppl best / last | "
            "words at best | wall |", "|---|---|---|---|---|---|---|"]
    for r in results:
        h = r["history"]
        best = max(h, key=lambda e: e[f"eval/{metric}"])
        curve = " · ".join(f"{e[f'eval/{metric}']:.3f}" for e in h)
        rows.append(f"| {' '.join(r['point'])} | {curve} | {best[f'eval/{metric}']:.4f} ({best['step']}) | "
                    f"{_get(best, 'embedding_similarity', '.3f')} | {_get(best, 'perplexity', '.2f')} / "
                    f"{_get(h[-1], 'perplexity', '.2f')} | {_get(best, 'length_words', '.1f')} | "
                    f"{r['wall_s'] / 60:.1f} min |")
    return "\n".join(rows)


def _get(evaluation: dict, key: str, spec: str) -> str:
    value = evaluation.get(f"eval/{key}")
    return "–" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--grid", action="append", help="key=v1,v2,... (repeatable)")
    parser.add_argument("--set", action="append", default=[], help="extra override for every point (repeatable)")
    parser.add_argument("--metric", default="rougeL")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--work", default="runs/sweep")
    parser.add_argument("--output", default=None, help="markdown file whose <!-- sweep:NAME --> section is replaced")
    parser.add_argument("--collect", action="store_true", help="run nothing: tabulate every point folder under "
                        "<work>/<name>, runs stopped before max_steps included (marked)")
    args = parser.parse_args()
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    work = Path(args.work) / args.name
    work.mkdir(parents=True, exist_ok=True)
    points = grid_points(args.grid or [])
    if args.collect:
        results = [collected(folder) for folder in sorted(work.iterdir()) if (folder / "metrics.jsonl").is_file()]
    else:
        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda p: run_point(args.config, p, work / point_name(p), threads, args.set),
                                    points))
    text = table(results, args.metric)
    print(text)
    if args.output:
        _replace_section(Path(args.output), args.name, text)


def _replace_section(path: Path, name: str, text: str, tag: str = "sweep") -> None:
    start, end = f"<!-- {tag}:{name} -->", f"<!-- /{tag}:{name} -->"
    old = path.read_text() if path.is_file() else ""
    block = f"{start}\n{text}\n{end}"
    if start in old and end in old:
        new = old[:old.index(start)] + block + old[old.index(end) + len(end):]
    else:
        new = old + ("\n" if old else "") + block + "\n"
    path.write_text(new)


if __name__ == "__main__":
    main()
