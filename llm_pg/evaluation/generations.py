"""An evaluation's generations file (<name>.jsonl beside <name>.json): its name, writing it and reading it back.

Apart from heldout.py (which hands these names on) so that `llm-pg eval --compare`, `llm-pg report` and the checks
of `llm-pg eval --output` read and name the files without importing the generation code (torch, transformers).
"""

from __future__ import annotations

import json
from pathlib import Path

from llm_pg.errors import LlmPgError
from llm_pg.evaluation.metrics import Generation


class EvalFileError(LlmPgError):
    """An evaluation file that is missing or does not hold generations."""


def write_generations(generations: list[Generation], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for g in generations:
            f.write(json.dumps({"id": g.id, "sample": g.sample, "prompt": g.prompt, "references": g.references,
                                "completion": g.completion, "tokens": g.tokens, "ref_logprob": g.ref_logprob,
                                "metrics": g.metrics}, ensure_ascii=False) + "\n")


def generations_path(output: str | Path) -> Path:
    """eval.json -> eval.jsonl (the generations beside the scores)."""
    output = Path(output)
    return output.with_suffix(".jsonl") if output.suffix == ".json" else output.with_name(output.name + ".jsonl")


def load_generations(path: str | Path) -> list[Generation]:
    """Generations from an eval JSONL file, or from the JSON scores file beside it."""
    path = Path(path)
    if path.suffix == ".json":
        path = generations_path(path)
    if not path.is_file():
        raise EvalFileError(f"no generations file {path}: give the .json or .jsonl written by `llm-pg eval`")
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        generations = [Generation(str(r["id"]), int(r["sample"]), r["prompt"], list(r["references"]),
                                  r["completion"], _numbers(r["metrics"]), int(r.get("tokens", 0)),
                                  r.get("ref_logprob"))
                       for r in rows]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise EvalFileError(f"{path}: not a generations file of `llm-pg eval` ({type(e).__name__}: {e})") from None
    if not generations:
        raise EvalFileError(f"{path}: holds no generations; give the .json or .jsonl written by `llm-pg eval`")
    return generations


def _numbers(metrics: dict) -> dict[str, float]:
    """A row's metrics, each a number or null (a text or a list there: not a file written by `llm-pg eval`)."""
    bad = [k for k, v in metrics.items() if v is not None and not isinstance(v, (int, float))]
    if bad:
        raise ValueError(f"metric '{bad[0]}' is {metrics[bad[0]]!r}, not a number")
    return dict(metrics)
