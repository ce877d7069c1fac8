"""scripts/bench_learning.py --seeds: the across-seed table of llm_pg vs TRL, checked by hand (the training itself
needs TRL and minutes a seed: it is a benchmark, not a test)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import SimpleNamespace

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_learning.py"


def _script():
    spec = importlib.util.spec_from_file_location("bench_learning", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _seed(start_llm, start_trl, trl_llm) -> dict:
    d = lambda v: {"rougeL": SimpleNamespace(difference=v)}  # noqa: E731
    return {("start", "llm_pg"): d(start_llm), ("start", "trl"): d(start_trl), ("trl", "llm_pg"): d(trl_llm)}


def test_the_across_seed_table_is_the_mean_with_its_t_interval():
    bench = _script()
    table = bench.across_seeds_table([0, 1, 2], [_seed(0.15, 0.05, 0.05), _seed(0.2, 0.25, -0.05),
                                                  _seed(0.25, 0.0, 0.3)])
    row = next(line for line in table.splitlines() if line.startswith("| rougeL |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    half = 4.303 * 0.05 / math.sqrt(3)  # values 0.15, 0.2, 0.25: sd 0.05; t(0.975, 2) = 4.303
    assert cells[1] == "+0.1500 / +0.2000 / +0.2500"
    assert cells[2] == f"**+0.2000** [{0.2 - half:+.4f}, {0.2 + half:+.4f}]"  # clear of 0: bold
    sd = math.sqrt(((0.05 - 0.1) ** 2 + (0.25 - 0.1) ** 2 + 0.1 ** 2) / 2)
    assert cells[4] == f"+0.1000 [{0.1 - 4.303 * sd / math.sqrt(3):+.4f}, {0.1 + 4.303 * sd / math.sqrt(3):+.4f}]"
    assert cells[5] == "+0.0500 / -0.0500 / +0.3000" and not cells[6].startswith("**")
    assert len([line for line in table.splitlines() if line.startswith("| ")]) == 2  # head + rougeL only
    one = bench.across_seeds_table([0], [_seed(0.15, 0.05, 0.05)])
    assert "| +0.1500 | +0.1500 (one seed: no interval) |" in one and "nan" not in one


def test_a_finished_trl_run_is_reused_not_retrained(tmp_path, monkeypatch):
    bench = _script()
    out = tmp_path / "trl"
    (out / "final").mkdir(parents=True)
    (out / "trl.json").write_text('{"wall_s": 12.5, "steps": 7}')
    monkeypatch.setattr(bench.subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
    assert bench.run_trl(SimpleNamespace(), out, 16) == (out / "final", 12.5, 7)
