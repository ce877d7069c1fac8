"""Generated task data: `data.source: reasoning_gym:<task>`, questions with verifiable answers, made offline.

reasoning-gym (`pip install "llm_pg[reason]"`) has seeded procedural generators: item i of a task built with
seed s is drawn from Random(s + i) (most tasks; the others from Random(s)). Each split k (0 train, 1 validation,
2 test) draws from its own range of seeds, so the splits are disjoint by construction:

    split seed  s_k = data.task_seed + k * SPLIT_STRIDE,    item i of split k: Random(s_k + i),  i < SPLIT_STRIDE

and checked: a small task can still produce one question from two seeds, so the held-out splits are made first
(test, then validation without test's questions) and train leaves out every held-out question; each split also
drops its own repeats and draws further items of its range until it has data.task_sizes[k] questions. Test and
validation therefore depend on their seed and sizes only, never on the size of train.

Records: {"id", "question", "answer", "task", "metadata"} (the prompt and reference fields default to question /
answer; task and metadata reach the rewards as columns, for the verifier's compare: reasoning_gym). A task
without one right answer (propositional_logic) has an empty answer: score it with compare: reasoning_gym.
"""

from __future__ import annotations

import functools
import json

from llm_pg.errors import DataError

PREFIX = "reasoning_gym:"
SPLIT_STRIDE = 10**8  # seeds per split; numpy-seeded tasks need every seed below 2**32
MAX_SEED = 2**32 - 3 * SPLIT_STRIDE  # data.task_seed must lie below this (checks/validate.py)
INSTALL = "pip install 'llm_pg[reason]' (or pip install reasoning-gym)"


def is_task_source(source: str) -> bool:
    return source.startswith(PREFIX)


def task_name(source: str) -> str:
    return source[len(PREFIX):]


def split_seed(seed: int, split_index: int) -> int:
    """s_k = seed + k * SPLIT_STRIDE: the first seed of split k's range."""
    return seed + split_index * SPLIT_STRIDE


def _dataset(task: str, seed: int, size: int, options: dict):
    """reasoning_gym's dataset of the task, or a DataError that says what to install or fix."""
    try:
        import reasoning_gym
        from reasoning_gym.factory import DATASETS
    except ImportError:
        raise DataError(f"data.source: '{PREFIX}{task}' needs the reasoning-gym package: {INSTALL}") from None
    if task not in DATASETS:
        raise DataError(f"data.source: '{task}' is not a reasoning_gym task; choose one of {sorted(DATASETS)}")
    try:
        return reasoning_gym.create_dataset(task, seed=seed, size=size, **options)
    except (TypeError, ValueError, AssertionError) as e:  # unknown option (TypeError) or a failed config check
        raise DataError(f"data.task_options: reasoning_gym task '{task}' refused {options}: {type(e).__name__}: "
                        f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None


def _draw(task: str, seed: int, size: int, options: dict, taken: set[str], split: str) -> list[dict]:
    """`size` records of distinct questions not in `taken`, from items 0, 1, 2, ... of the seed's range."""
    budget = min(10 * size + 100, SPLIT_STRIDE)  # how many items to try before calling the task too small
    dataset = _dataset(task, seed, budget, options)
    records: list[dict] = []
    seen = set(taken)
    for i in range(budget):
        item = dataset[i]
        question = str(item["question"])
        if question in seen:
            continue
        seen.add(question)
        answer = item.get("answer")  # None for a task without one right answer (propositional_logic)
        records.append({"id": f"{task}-{split}-{i}", "question": question, "answer": "" if answer is None else
                        str(answer), "task": task, "metadata": item.get("metadata", {})})
        if len(records) == size:
            return records
    raise DataError(f"data.task_sizes: reasoning_gym task '{task}' gave only {len(records)} distinct {split} "
                    f"questions (not in the other splits) in {budget} draws; ask for fewer, or make the task "
                    "harder with data.task_options")


@functools.lru_cache(maxsize=8)
def _generate(task: str, sizes: tuple[int, int, int], seed: int, options_json: str) -> tuple[list, list, list]:
    options = json.loads(options_json)
    test = _draw(task, split_seed(seed, 2), sizes[2], options, set(), "test")
    validation = _draw(task, split_seed(seed, 1), sizes[1], options, {r["question"] for r in test}, "validation")
    held_out = {r["question"] for r in test + validation}
    train = _draw(task, split_seed(seed, 0), sizes[0], options, held_out, "train")
    return train, validation, test


def generate_splits(task: str, sizes, seed: int, options: dict | None = None) -> tuple[list, list, list]:
    """(train, validation, test) records of the task (module docstring); the same arguments give the same records."""
    return _generate(task, tuple(int(n) for n in sizes), int(seed), json.dumps(options or {}, sort_keys=True))


def load_task_split(config, split: str) -> list[dict]:
    """The records of one split (data.train_split / validation_split / test_split) of a reasoning_gym source.
    `config` is a config.DataConfig, not imported: checks/ reads this module's constants while the config loads."""
    names = [config.train_split, config.validation_split, config.test_split]
    if split not in names:
        raise DataError(f"data: split '{split}' is not one of {names}, the splits generated from "
                        f"'{config.source}'")
    splits = generate_splits(task_name(config.source), config.task_sizes, config.task_seed, config.task_options)
    return [dict(r) for r in splits[names.index(split)]]
