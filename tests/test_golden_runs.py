"""The golden runs (tests/golden_runs.py) must reproduce their recorded metrics and held-out scores bit for bit.

This guards every behaviour-neutral change to the training path: a refactor that changes any number of any
algorithm's run fails here. A change meant to alter a run re-records with `python tests/golden_runs.py --record`.
"""

from __future__ import annotations

import json

import pytest

from golden_runs import CASES, GOLDEN_FILE, run_case, versions
from helpers import requires_tinystories


def _golden() -> dict:
    return json.loads(GOLDEN_FILE.read_text())


@requires_tinystories
@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_run_is_bit_identical(name, tinystories_dir, tmp_path):
    golden = _golden()
    now = versions()
    recorded = golden["versions"]
    if (now["torch"], now["transformers"]) != (recorded["torch"], recorded["transformers"]):
        pytest.skip(f"golden runs recorded with torch {recorded['torch']} / transformers {recorded['transformers']},"
                    f" this is {now['torch']} / {now['transformers']}: re-record with "
                    "`python tests/golden_runs.py --record` on a commit known to be right")
    expected = golden["runs"][name]
    got = run_case(name, tinystories_dir, tmp_path)
    assert [m["step"] for m in got["metrics"]] == [m["step"] for m in expected["metrics"]]
    for want, have in zip(expected["metrics"], got["metrics"]):
        assert have.keys() == want.keys(), f"step {want['step']}: metric names changed"
        for key in want:  # exact: the same floats, NaN where NaN was recorded
            assert json.dumps(have[key]) == json.dumps(want[key]), (name, want["step"], key, want[key], have[key])
    for split in ("eval_before", "eval_after"):
        assert json.dumps(got[split], sort_keys=True) == json.dumps(expected[split], sort_keys=True), split


def test_every_case_is_recorded():
    assert sorted(_golden()["runs"]) == sorted(CASES)
