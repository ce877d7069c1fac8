"""Stage (a) of the pipeline (llm_pg/pipelines/rlhf.py): preference pairs -> the files every later stage reads.

    <rlhf.output_dir>/data/
      train.jsonl, validation.jsonl, test.jsonl  {"id", "messages": the prompt turns, "reference": the chosen answer}
      pairs_proxy/{train,test}.jsonl             the raw pair records of the proxy reward model's half (+ the test
      pairs_gold/{train,test}.jsonl              pairs), and of the gold one's: `llm-pg rm` reads them as it reads
                                                 rm.source, in their own format
      split.json                                 which training pair went where, and the counts

The training pairs are shuffled once (seed training.seed): the first rlhf.validation_pairs become the validation
prompts (no stage trains on them), the rest alternate between the proxy half and the gold half, so the two reward
models never see the same pair and together see every remaining one. SFT learns the chosen answers of both halves;
RL samples the prompts of both. The test prompts are the pairs' held-out split (rm.eval_split).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from llm_pg.data.preferences import PairFields, load_pair_records
from llm_pg.errors import DataError


@dataclass
class PairSplit:
    """Indices into the training pairs (each list sorted)."""

    validation: list[int]
    proxy: list[int]
    gold: list[int]


def split_pairs(n: int, validation: int, seed: int) -> PairSplit:
    """Seeded: `validation` pairs for validation, the rest alternately to the proxy and the gold half."""
    if n - validation < 2:
        raise DataError(f"rlhf.validation_pairs: {validation} of the {n} training pairs leaves fewer than 2 for the "
                        "two reward models; lower rlhf.validation_pairs or give more pairs")
    order = np.random.default_rng(seed).permutation(n).tolist()
    rest = order[validation:]
    return PairSplit(sorted(order[:validation]), sorted(rest[0::2]), sorted(rest[1::2]))


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _prompt_records(split: str, items: list, indices: list[int]) -> list[dict]:
    """{"id", "messages", "reference"}: a `messages` record (llm_pg/data/prompts.py) whose reference is the chosen answer."""
    return [{"id": f"{split}-{i}", "messages": items[i][1].prompt, "reference": items[i][1].chosen} for i in indices]


def prepare(config, folder: Path) -> dict:
    """Write data/ (see the module docstring); returns the counts (also in split.json)."""
    rm = config.rm
    fields = PairFields.of(rm)
    train = load_pair_records(rm.source, rm.train_split, fields, rm.max_train_pairs, rm.eval_fraction, rm.eval_split)
    test = load_pair_records(rm.source, rm.eval_split, fields, None, rm.eval_fraction, rm.eval_split)
    split = split_pairs(len(train), config.rlhf.validation_pairs, config.training.seed)
    trained = sorted(split.proxy + split.gold)
    _write_jsonl(folder / "train.jsonl", _prompt_records("train", train, trained))
    _write_jsonl(folder / "validation.jsonl", _prompt_records("train", train, split.validation))
    _write_jsonl(folder / "test.jsonl", _prompt_records("test", test, list(range(len(test)))))
    for half in ("proxy", "gold"):
        _write_jsonl(folder / f"pairs_{half}" / "train.jsonl", [train[i][0] for i in getattr(split, half)])
        _write_jsonl(folder / f"pairs_{half}" / "test.jsonl", [record for record, _ in test])
    counts = {"train_pairs": len(train), "validation": len(split.validation), "proxy": len(split.proxy),
              "gold": len(split.gold), "test": len(test)}
    (folder / "split.json").write_text(json.dumps({"counts": counts, "indices": asdict(split)}, indent=1))
    return counts



def length_target(folder: Path) -> int:
    """T of rlhf.length_penalty, from the data stage's output in folder: the median word count of the chosen answers
    (the records' references) of the proxy half's training pairs -- the length people wrote, which SFT imitated and
    the proxy reward model learned from. The lower median of an even count (a count that occurs), at least 1."""
    import statistics

    proxy = {f"train-{i}" for i in json.loads((folder / "split.json").read_text())["indices"]["proxy"]}
    rows = [json.loads(line) for line in (folder / "train.jsonl").read_text(encoding="utf-8").splitlines() if line]
    return max(1, statistics.median_low(len(r["reference"].split()) for r in rows if r["id"] in proxy))
