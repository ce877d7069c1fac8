"""The golden runs (tests/golden_runs.py) must reproduce their record: bit for bit on the recording machine, within
1e-4 on another CPU.

This guards every behaviour-neutral change to what llm_pg computes (RL training with every algorithm, SFT, the
reward model, the rlhf pipeline): a refactor that changes any number of any case fails here. A change meant to alter
a run re-records with `python tests/golden_runs.py --record`, in its own commit that says why.
"""

from __future__ import annotations

import json

import pytest

from golden_runs import TOLERANCE, all_cases, differences, fingerprint, read_records, record_for, run_case
from helpers import requires_tinystories


@requires_tinystories
@pytest.mark.parametrize("name", all_cases())
def test_golden_run_reproduces_its_record(name, tinystories_dir, tmp_path):
    want, exact, recorded_on = record_for(name, read_records(), fingerprint())
    got = run_case(name, tinystories_dir, tmp_path)
    found = differences(want, json.loads(json.dumps(got)), exact)
    how = "bit for bit" if exact else f"within {TOLERANCE:g} (recorded on {recorded_on}, this is {fingerprint()}; " \
                                       "a change that keeps runs as they were: tests/golden_runs.py --add-machine)"
    assert not found, f"{name} differs from its record ({how}):\n" + "\n".join(found[:20])


def test_every_case_is_recorded():
    records = read_records()
    assert sorted({name for r in records for name in r["runs"]}) == sorted(all_cases())
    assert len({json.dumps(r["fingerprint"], sort_keys=True) for r in records}) == len(records)  # one per machine


def test_the_comparison_is_exact_on_the_recording_machine_and_tolerant_elsewhere():
    want = {"metrics": [{"step": 1, "loss": 0.5, "text": "a"}]}
    near = {"metrics": [{"step": 1, "loss": 0.5 + 1e-6, "text": "a"}]}
    far = {"metrics": [{"step": 1, "loss": 0.5 + 1e-3, "text": "a"}]}
    assert differences(want, want, exact=True) == []
    assert differences(want, near, exact=True) != []
    assert differences(want, near, exact=False) == []
    assert differences(want, far, exact=False) != []
    assert differences(want, {"metrics": [{"step": 2, "loss": 0.5, "text": "a"}]}, exact=False) != []  # ints exact
    assert differences(want, {"metrics": [{"step": 1, "loss": 0.5, "text": "b"}]}, exact=False) != []
    assert differences(want, {"metrics": []}, exact=False) != []
    assert differences({"x": float("nan")}, {"x": float("nan")}, exact=False) == []


def test_each_machine_compares_with_its_own_record_and_recording_drops_stale_ones(tmp_path, monkeypatch):
    import golden_runs

    xeon, epyc, other = {"cpu": "Xeon"}, {"cpu": "EPYC"}, {"cpu": "ARM"}
    monkeypatch.setattr(golden_runs, "GOLDEN_FILE", tmp_path / "golden.json")
    golden_runs.write_records({"a": {"x": 1.0}, "b": {"x": 2.0}}, xeon, drop_elsewhere=True)
    golden_runs.write_records({"a": {"x": 1.1}, "b": {"x": 2.1}}, epyc, drop_elsewhere=False)  # --add-machine
    records = read_records()
    assert record_for("a", records, epyc) == ({"x": 1.1}, True, epyc)  # its own: bit for bit
    assert record_for("a", records, xeon) == ({"x": 1.0}, True, xeon)
    assert record_for("a", records, other) == ({"x": 1.0}, False, xeon)  # a machine without one: the first, tolerant
    golden_runs.write_records({"b": {"x": 2.5}}, epyc, drop_elsewhere=True)  # --record b: a change meant to change b
    records = read_records()
    assert record_for("b", records, xeon) == ({"x": 2.5}, False, epyc)  # the Xeon's b was stale and is gone
    assert record_for("a", records, xeon) == ({"x": 1.0}, True, xeon)  # a was not recorded again: kept
