"""The golden runs (tests/golden_runs.py) must reproduce their record: bit for bit on the recording machine, within
1e-4 on another CPU.

This guards every behaviour-neutral change to what llm_pg computes (RL training with every algorithm, SFT, the
reward model, the rlhf pipeline): a refactor that changes any number of any case fails here. A change meant to alter
a run re-records with `python tests/golden_runs.py --record`, in its own commit that says why.
"""

from __future__ import annotations

import json

import pytest

from golden_runs import GOLDEN_FILE, TOLERANCE, all_cases, differences, fingerprint, run_case
from helpers import requires_tinystories


def _golden() -> dict:
    return json.loads(GOLDEN_FILE.read_text())


@requires_tinystories
@pytest.mark.parametrize("name", all_cases())
def test_golden_run_reproduces_its_record(name, tinystories_dir, tmp_path):
    golden = _golden()
    exact = golden["fingerprint"] == fingerprint()
    got = run_case(name, tinystories_dir, tmp_path)
    found = differences(golden["runs"][name], json.loads(json.dumps(got)), exact)
    how = "bit for bit" if exact else f"within {TOLERANCE:g} (recorded on {golden['fingerprint']}, this is " \
                                       f"{fingerprint()})"
    assert not found, f"{name} differs from its record ({how}):\n" + "\n".join(found[:20])


def test_every_case_is_recorded():
    assert sorted(_golden()["runs"]) == sorted(all_cases())


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
