"""`llm-pg compare`: arms of one config trained with the same data order, budget and seeds, one run at a time
(or `--jobs N` at a time).

    llm-pg compare --config configs/demo.yaml --seeds 0 1 2 --output-dir runs/demo_compare \\
        --arm bf16 training.mixed_precision=bf16   training.max_steps=24

Arms: `config` (the config as given), the controls `random_reward` and `shuffled_reward` (reward.control: the
reward replaced by noise or by the batch's rewards permuted, llm_pg/rewards/control.py), and every
`--arm NAME KEY=VALUE ...`. Each (arm, seed) is a normal run folder, <output-dir>/<arm>/seed-<s>/, written by
`llm-pg train` in a process of its own (its memory is its own, and a crash loses one run), with the evaluations
before and after training on. A rerun skips finished runs, resumes a run that has a checkpoint and restarts one
that has none, so an interrupted comparison continues where it stopped; the plan (config, overrides, arms, seeds)
is kept in compare_plan.json and a rerun with another plan is refused. With `--jobs N`, N runs train at once (each
run's messages in <output-dir>/logs/<arm>-seed-<s>.log); a run computes the same numbers either way, so --jobs is
not part of the plan, but training.num_threads must be set, or N runs would each take every core. The statistics
and the report are pipelines/compare_report.py's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from llm_pg.errors import ConfigError, LlmPgError

logger = logging.getLogger(__name__)
PLAN_FILE = "compare_plan.json"
CONTROL_ARMS = {"random_reward": "random", "shuffled_reward": "shuffled"}
FORCED = ["evaluation.before_training=true", "evaluation.after_training=true"]  # Δ vs start and vs control need both


@dataclass(frozen=True)
class Arm:
    name: str
    overrides: tuple[str, ...]  # dotted KEY=VALUE, after the comparison's own overrides
    control: str | None = None  # the reward.control of a control arm


@dataclass(frozen=True)
class Plan:
    config: str  # the config file, as an absolute path
    overrides: tuple[str, ...]  # applied to every arm
    arms: tuple[Arm, ...]
    seeds: tuple[int, ...]

    def folder(self, root: Path, arm: Arm, seed: int) -> Path:
        return root / arm.name / f"seed-{seed}"

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


def make_plan(config: str | Path, overrides: list[str], seeds: list[int], controls: list[str],
              arms: list[list[str]]) -> Plan:
    """The arms in order: config, the controls, the user's; every name and override checked (one line each)."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"compare --seeds: give distinct seeds, got {seeds}")
    unknown = [c for c in controls if c not in CONTROL_ARMS]
    if unknown:
        raise ConfigError(f"compare --controls: {unknown} unknown; choose from {list(CONTROL_ARMS)} (or none)")
    planned = [Arm("config", ())] + [Arm(c, (f"reward.control={CONTROL_ARMS[c]}",), CONTROL_ARMS[c]) for c in controls]
    for name, *values in arms:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", name) or "=" in name:
            raise ConfigError(f"compare --arm: '{name}' is not an arm name; write --arm NAME KEY=VALUE ... (letters, "
                              "digits, _ . + -)")
        bad = [v for v in values if "=" not in v]
        if not values or bad:
            raise ConfigError(f"compare --arm {name}: give its settings as KEY=VALUE, got {values or 'none'}")
        planned.append(Arm(name, tuple(values)))
    names = [a.name for a in planned]
    if len(set(names)) != len(names):
        raise ConfigError(f"compare --arm: the arm names {names} repeat; give each arm its own name")
    return Plan(str(Path(config).resolve()), tuple(overrides), tuple(planned), tuple(seeds))


def arm_overrides(plan: Plan, root: Path, arm: Arm, seed: int) -> list[str]:
    """Everything `llm-pg train` gets after --config for this run, the run's own seed and folder last."""
    return [*plan.overrides, *arm.overrides, *FORCED, f"training.seed={seed}",
            f"training.output_dir={plan.folder(root, arm, seed)}"]


def check_arms(plan: Plan, root: Path, jobs: int = 1) -> None:
    """Load every arm's config before anything trains: a bad override, or several jobs with the thread count left
    to each run (every run would take every core), stops the comparison in one line."""
    from llm_pg.config.schema import load_config

    if jobs < 1:
        raise ConfigError(f"compare --jobs: {jobs} runs at a time; give 1 or more")
    for arm in plan.arms:
        try:
            config = load_config(plan.config, arm_overrides(plan, root, arm, plan.seeds[0]))
        except LlmPgError as e:
            raise ConfigError(f"compare arm '{arm.name}': {e}") from None
        if jobs > 1 and config.training.num_threads == 0:
            raise ConfigError(f"compare --jobs {jobs}: set training.num_threads for every arm (e.g. "
                              f"training.num_threads={max(1, (os.cpu_count() or 1) // jobs)} after --config), or "
                              f"{jobs} runs would each take every core")


def hold_plan(plan: Plan, root: Path) -> None:
    """Write compare_plan.json, or check that the folder's comparison is this one."""
    path = root / PLAN_FILE
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except ValueError:
            raise LlmPgError(f"compare: {path} is damaged; delete it (the runs beside it are kept and "
                             "reused)") from None
        if saved != plan.to_dict():
            changed = sorted(k for k in plan.to_dict() if saved.get(k) != plan.to_dict()[k])
            raise LlmPgError(f"compare: {root} holds another comparison (its {', '.join(changed)} differ); rerun it "
                             "with the same config, overrides, arms and seeds, or choose another --output-dir")
        return
    if root.exists() and any(root.iterdir()):
        raise LlmPgError(f"compare: {root} is not empty and holds no {PLAN_FILE}; choose another --output-dir")
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plan.to_dict(), indent=1) + "\n")


def finished(folder: Path) -> bool:
    """Both evaluations written and, unless the run was told not to save it, final/: a run that stopped between its
    evaluation after training and the end of final/ (a full disk) is resumed, not counted as done."""
    evaluated = (folder / "eval_after.json").is_file() and (folder / "eval_before.json").is_file()
    return evaluated and ((folder / "final" / "config.json").is_file() or not _saves_final(folder))


def _saves_final(folder: Path) -> bool:
    import yaml

    saved = yaml.safe_load((folder / "config.yaml").read_text()) if (folder / "config.yaml").is_file() else {}
    return bool(((saved or {}).get("training") or {}).get("save_final_model", True))


def run_one(plan: Plan, root: Path, arm: Arm, seed: int, log: Path | None = None) -> str:
    """Train one (arm, seed) unless it is finished: 'done' (skipped), 'resumed' or 'trained'. Its messages go to
    this terminal, or to `log` (appended) when given."""
    from llm_pg.runs.checkpoint import latest_checkpoint  # torch and the model code: not for a refused plan

    folder = plan.folder(root, arm, seed)
    if finished(folder):
        logger.info("compare: arm %s, seed %d: done; skipped", arm.name, seed)
        return "done"
    flag = ["--resume"] if latest_checkpoint(folder) is not None else ["--overwrite"] if folder.exists() else []
    command = [sys.executable, "-m", "llm_pg", "train", "--config", plan.config, *flag,
               *arm_overrides(plan, root, arm, seed)]
    logger.info("compare: arm %s, seed %d%s%s", arm.name, seed, " (resumed)" if flag == ["--resume"] else "",
                f" (messages: {log})" if log else "")
    with open(log, "a") if log else contextlib.nullcontext() as sink:  # None: this terminal
        status = subprocess.run(command, env=os.environ.copy(), stdout=sink,
                                stderr=subprocess.STDOUT if sink else None).returncode
    if status != 0:
        raise LlmPgError(f"compare: arm '{arm.name}' seed {seed} stopped (exit code {status}; its messages are "
                         f"{f'in {log}' if log else 'above'}, its folder is {folder}); fix it and rerun llm-pg "
                         "compare, which continues there")
    return "resumed" if flag == ["--resume"] else "trained"


def run_all(plan: Plan, root: Path, jobs: int) -> None:
    """Every (arm, seed), seed by seed (an interrupted comparison has whole seeds first), `jobs` at a time. After a
    failure no further run starts; the runs already training finish, then the first failure is raised."""
    runs = [(arm, seed) for seed in plan.seeds for arm in plan.arms]
    if jobs == 1:
        for arm, seed in runs:
            run_one(plan, root, arm, seed)
        return
    (root / "logs").mkdir(exist_ok=True)
    failures: list[LlmPgError] = []
    stop = threading.Event()

    def train(run: tuple[Arm, int]) -> None:
        arm, seed = run
        if stop.is_set():
            return
        try:
            run_one(plan, root, arm, seed, root / "logs" / f"{arm.name}-seed-{seed}.log")
        except LlmPgError as e:
            stop.set()
            failures.append(e)

    with ThreadPoolExecutor(max_workers=jobs) as pool:  # threads that each wait on one training process
        list(pool.map(train, runs))
    if failures:
        raise failures[0]


def run_compare(plan: Plan, root: str | Path, resamples: int = 1000, jobs: int = 1) -> dict:
    """Train every (arm, seed) not yet finished, `jobs` at a time, then write compare.json and the report."""
    from llm_pg.pipelines.compare_report import write_comparison

    root = Path(root)
    if resamples < 1:  # before anything trains, not after every arm has
        raise ConfigError(f"compare --resamples: must be >= 1 (1000 is usual), got {resamples}")
    if root.exists() and not root.is_dir():
        raise ConfigError(f"compare --output-dir: {root} is a file; choose a folder")
    check_arms(plan, root, jobs)
    hold_plan(plan, root)
    run_all(plan, root, jobs)
    return write_comparison(plan, root, resamples)
