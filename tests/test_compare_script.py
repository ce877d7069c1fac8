"""scripts/compare_algorithms.py end to end on the tiny model: one process per method, a table section written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers import CAN_LEARN, cli_env, write_config_yaml, write_tiny_data

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_algorithms.py"


def test_compare_writes_a_table_and_resumes(tiny_model_dir, tmp_path):
    data = write_tiny_data(tmp_path / "data.jsonl", 40)
    config = write_config_yaml(tmp_path / "c.yaml", tiny_model_dir, data, tmp_path / "unused", **CAN_LEARN)
    output = tmp_path / "results.md"
    output.write_text("# Results\n\nkept text\n")
    args = [sys.executable, str(SCRIPT), "--config", str(config), "--name", "tiny", "--seeds", "0", "1",
            "--steps", "1", "--eval-samples", "3", "--jobs", "1", "--work", str(tmp_path / "work"),
            "--output", str(output), "--methods", "base", "reinforce/none", "sft"]
    done = subprocess.run(args, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    text = output.read_text()
    assert text.startswith("# Results\n\nkept text\n")
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert [r.split(" | ")[0] for r in rows] == ["| base", "| reinforce/none", "| sft"]
    assert "±" in rows[1] and "±" not in rows[0]  # two seeds vs the one (seed-free) base evaluation
    result = json.loads((tmp_path / "work" / "reinforce-none-s1.json").read_text())
    assert result["seed"] == 1 and result["num_eval"] == 3 and result["peak_rss_gb"] > 0

    again = subprocess.run(args, env=cli_env(), capture_output=True, text=True, timeout=300)  # all results exist
    assert again.returncode == 0 and "done:" not in again.stdout  # nothing ran again
    assert output.read_text().count("<!-- results:tiny -->") == 1  # the section was replaced, not appended
