"""Resident memory of a command over time, by the phase its progress bars name: where a run's peak is.

    python scripts/memory_timeline.py --out runs/demo_memory -- llm-pg demo training.output_dir=runs/demo_memory/run

Runs the command (its output to <out>/command.log), samples the resident memory of its process every --every
seconds from /proc (Linux), and labels each sample with the last progress bar the log shows (eval_before, train
12/32, validation@8, eval_after, ...). Writes <out>/rss.tsv (seconds, GB, phase) and prints the peak of each phase
in the order the phases came. The process's own memory only (not its children's); a sample every 0.25 s misses
peaks shorter than that, so the highest sample can sit a little below the kernel's peak (printed beside it).
"""

from __future__ import annotations

import argparse
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

BAR = re.compile(r"([A-Za-z_]+(?:@\d+)?): +\d+%\|[^|]*\| *(\d+/\d+)")  # tqdm: 'train:  38%|###   | 12/32'


def resident_gb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(found.group(1)) / 1e6 if found else None  # kB / 10**6, as /usr/bin/time and the other scripts


def phase(log: Path) -> str:
    """The last progress bar in the log's tail, as 'name step/total' ('-' before the first one)."""
    with open(log, "rb") as f:
        f.seek(max(0, log.stat().st_size - 400))
        bars = BAR.findall(f.read().decode(errors="replace"))
    return f"{bars[-1][0]} {bars[-1][1]}" if bars else "-"


def peaks_by_phase(rows: list[tuple[float, float, str]]) -> list[tuple[str, float, float]]:
    """(phase name without its step, highest GB, seconds of that sample), in the order the phases first came."""
    best: dict[str, tuple[float, float]] = {}
    for seconds, gb, label in rows:
        name = label.split(" ")[0]
        if name not in best or gb > best[name][0]:
            best[name] = (gb, seconds)
    return [(name, gb, seconds) for name, (gb, seconds) in best.items()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for command.log and rss.tsv")
    parser.add_argument("--every", type=float, default=0.25, help="seconds between samples")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "command.log"
    rows: list[tuple[float, float, str]] = []
    start = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        while process.poll() is None:
            gb = resident_gb(process.pid)
            if gb is not None:
                rows.append((time.monotonic() - start, gb, phase(log_path)))
            time.sleep(args.every)
    kernel_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6  # kB on Linux
    (out / "rss.tsv").write_text("seconds\tGB\tphase\n" + "".join(f"{s:.2f}\t{g:.3f}\t{p}\n" for s, g, p in rows))
    print(f"exit status {process.returncode}, {time.monotonic() - start:.0f} s, {len(rows)} samples; "
          f"peak RSS {kernel_peak:.2f} GB (kernel), highest sample {max((g for _, g, _ in rows), default=0):.2f} GB")
    print("| phase | highest sample (GB) | at (s) |\n|---|---|---|")
    for name, gb, seconds in peaks_by_phase(rows):
        print(f"| {name} | {gb:.2f} | {seconds:.0f} |")
    return process.returncode


if __name__ == "__main__":
    sys.exit(main())
