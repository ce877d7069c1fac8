"""scripts/memory_timeline.py: the resident memory of a command, by the phase its progress bars name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from memory_timeline import BAR, peaks_by_phase  # noqa: E402

# a process that says it is evaluating while it holds 400 MB, then says it trains while holding none of it
CHILD = ("import sys, time\n"
         "print('eval_before:  50%|#####     | 6/12 [00:04<00:05,  1s/it]', file=sys.stderr, flush=True)\n"
         "held = b'x' * 400_000_000\n"
         "time.sleep(1.5)\n"
         "del held\n"
         "print('train:  25%|##        | 8/32 [00:09<00:27,  1s/it, reward=0.1]', file=sys.stderr, flush=True)\n"
         "time.sleep(1.5)\n")


def test_the_progress_bars_of_a_run_are_read_as_phases():
    line = ("train:  22%|##2       | 7/32 [01:12<04:27, 10.70s/it, cps=1.49]\rvalidation@8:  33%|###3      | 1/3 "
            "[00:05<00:11,  5.94s/it]")
    assert BAR.findall(line) == [("train", "7/32"), ("validation@8", "1/3")]


def test_each_phase_keeps_its_highest_sample_in_the_order_the_phases_came():
    rows = [(0.0, 0.5, "-"), (1.0, 1.9, "eval_before 3/12"), (2.0, 1.2, "eval_before 9/12"), (3.0, 5.7, "train 8/32"),
            (4.0, 3.7, "validation@8 2/3"), (5.0, 5.9, "train 24/32")]
    assert peaks_by_phase(rows) == [("-", 0.5, 0.0), ("eval_before", 1.9, 1.0), ("train", 5.9, 5.0),
                                    ("validation@8", 3.7, 4.0)]


def test_a_command_is_sampled_and_its_peak_found_in_the_phase_that_held_the_memory(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "memory_timeline.py"), "--out", str(tmp_path),
                           "--every", "0.1", "--", sys.executable, "-c", CHILD], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    rows = [line.split("\t") for line in (tmp_path / "rss.tsv").read_text().splitlines()[1:]]
    phases = {phase.split(" ")[0] for _, _, phase in rows}
    assert {"eval_before", "train"} <= phases
    peak = {name: gb for name, gb, _ in peaks_by_phase([(float(s), float(g), p) for s, g, p in rows])}
    assert peak["eval_before"] > 0.35 > peak["train"]  # 400 MB held while it evaluated, freed before training
    assert "| eval_before |" in done.stdout and "peak RSS" in done.stdout
    assert "eval_before:  50%" in (tmp_path / "command.log").read_text()
