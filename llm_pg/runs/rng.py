"""Random streams: one seed builds identical processes, then each process samples from a stream of its own.

Every process seeds `training.seed` before it loads anything, so the policy, its value head and any LoRA adapter
start identical everywhere. Once the run is built, every process but the first reseeds torch, Python and NumPy with
a seed derived from (seed, process index): the completions of different processes are then independent draws. With
one shared stream, two processes given the same prompts drew the same completions, so a batch held half as much
information as it claimed (an outside audit: 16 of 16 completions duplicated). Process 0 keeps the stream it had:
a one-process run draws exactly what it drew before processes had streams of their own.

Draws that every process must agree on are process 0's, sent to the others (training/update.py: the minibatch order).
A checkpoint holds every process's state, gathered to the main process; a resume gives each process its own back.
"""

from __future__ import annotations

import logging
import random

import numpy as np
import torch

logger = logging.getLogger(__name__)


def derived_seed(*numbers: int) -> int:
    """A 32-bit seed mixed from all of `numbers` by NumPy's SeedSequence: (seed, process index) does not start
    where another run's seed + 1 starts (as `accelerate`'s device_specific seeding, seed + index, would)."""
    return int(np.random.SeedSequence(list(numbers)).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """torch (every device), Python's random and NumPy: accelerate's set_seed, which every trainer calls first
    (training/setup.py start_training)."""
    from accelerate.utils import set_seed

    set_seed(seed)


def split_streams(seed: int, process_index: int) -> None:
    """Give this process its own stream; process 0 keeps the one it has (see the module's docstring)."""
    if process_index > 0:
        seed_everything(derived_seed(seed, process_index))


def rng_state() -> dict:
    """This process's random state: Python, NumPy, torch's CPU generator and, where there are any, CUDA's."""
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    if torch.cuda.is_available():  # sampling on a GPU draws from the CUDA generators
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def all_rng_states(accelerator) -> list[dict]:
    """Every process's rng_state(), in process order, on every process (a collective: all processes call it)."""
    if accelerator is None or accelerator.num_processes == 1:
        return [rng_state()]
    from accelerate.utils import gather_object

    return gather_object([rng_state()])


def checkpoint_rng(states: list[dict]) -> dict:
    """What rng.pt holds: process 0's state at the top (as checkpoints before per-process streams had it) and every
    process's under 'processes'."""
    return {**states[0], "processes": states}


def restore_rng(saved: dict, process_index: int, num_processes: int, seed: int) -> None:
    """Give this process its state from rng.pt. A checkpoint of another number of processes (or one written before
    per-process streams) restores process 0's state and gives the other processes fresh streams: such a resume
    cannot repeat the uninterrupted run's samples, and the main process says so."""
    states = saved.get("processes") or [saved]
    if len(states) == num_processes:
        set_rng_state(states[process_index])
        return
    set_rng_state(states[0])
    split_streams(seed, process_index)
    if process_index == 0:
        logger.warning("the checkpoint holds the random streams of %d process(es) and this run has %d: the other "
                       "processes start fresh streams, so the samples after the resume differ from an "
                       "uninterrupted run's", len(states), num_processes)
