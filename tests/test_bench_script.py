"""scripts/bench_rl.py: its arithmetic (medians, ratios, the JSON record) and one real run on tinystories."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import TINYSTORIES, cli_env, requires_tinystories

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_rl.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_rl", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SPEC = {"model_name": "m", "prompts": 2, "samples": 4, "max_new_tokens": 8, "threads": 2, "device": "CPU", "steps": 3,
        "rounds": 2, "lr": 1e-6}
RESULTS = {  # two rounds per system: times (s), completion tokens per step, peak RSS (GB)
    "llm_pg": [{"times": [1.0, 3.0, 2.0], "tokens": [40, 40, 40], "peak_rss_gb": 1.0},
               {"times": [2.0, 2.0, 9.0], "tokens": [40, 40, 40], "peak_rss_gb": 1.2}],
    "trl": [{"times": [4.0, 4.0, 5.0], "tokens": [64, 64, 64], "peak_rss_gb": 2.0}],
    "bare": [{"times": [1.5, 1.5, 2.5], "tokens": [64, 64, 64], "peak_rss_gb": 0.9}],
    "llm_pg actor_critic": [{"times": [2.0, 2.0, 2.0], "tokens": [40, 40, 40], "peak_rss_gb": 1.32}],
}


def test_summary_takes_the_median_step_and_the_largest_peak(bench):
    summary = bench.summarize(RESULTS, SPEC)
    llm_pg = summary["llm_pg"]
    assert llm_pg["s_per_step"] == 2.0  # median of 1, 3, 2, 2, 2, 9
    assert llm_pg["completions_per_s"] == 8 / 2.0 and llm_pg["tokens_per_s"] == 40 / 2.0
    assert llm_pg["completion_tokens"] == 5.0 and llm_pg["peak_rss_gb"] == 1.2 and llm_pg["steps"] == 6
    ratios = bench.ratios(summary)
    assert ratios["llm_pg_vs_trl_completions_per_s"] == pytest.approx(4.0 / 2.0)  # 8/2 vs 8/4 completions/s
    assert ratios["llm_pg_vs_bare_s_per_step"] == pytest.approx(2.0 / 1.5)
    assert ratios["actor_critic_vs_reinforce_peak_rss"] == pytest.approx(1.32 / 1.2)


def test_markdown_marks_each_target(bench):
    text = bench.markdown(bench.summarize(RESULTS, SPEC), SPEC, "python scripts/bench_rl.py --model m")
    assert "| llm_pg / TRL completions/s | 2.00 | >= 1.5 | yes |" in text
    assert "| llm_pg / bare compute s/step | 1.33 | <= 1.2 | no |" in text
    assert "| Actor-Critic / REINFORCE peak RSS | 1.10 | <= 1.15 | yes |" in text
    assert "`python scripts/bench_rl.py --model m`" in text


def test_json_record_keeps_the_other_models(bench, tmp_path):
    path = tmp_path / "benchmarks.json"
    bench.update_json(path, SPEC, bench.summarize(RESULTS, SPEC), "cmd a")
    bench.update_json(path, {**SPEC, "model_name": "other"}, bench.summarize({"bare": RESULTS["bare"]}, SPEC), "cmd b")
    data = json.loads(path.read_text())
    assert set(data["models"]) == {"m", "other"}
    assert data["models"]["m"]["systems"]["trl"]["completions_per_s"] == 2.0
    assert data["models"]["m"]["ratios"]["llm_pg_vs_trl_completions_per_s"] == 2.0
    assert data["models"]["other"]["command"] == "cmd b" and data["models"]["other"]["ratios"] == {}


@requires_tinystories
def test_a_real_run_on_tinystories_writes_both_records(tmp_path):
    md, js = tmp_path / "bench.md", tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--model", str(TINYSTORIES), "--variants",
                           "llm_pg,bare,llm_pg actor_critic", "--rounds", "1", "--steps", "1", "--prompts", "2",
                           "--max-new-tokens", "8", "--output", str(md), "--json", str(js)],
                          env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(js.read_text())["models"]["tinystories-656k"]
    assert set(record["systems"]) == {"llm_pg", "bare", "llm_pg actor_critic"}
    for system in record["systems"].values():
        assert system["completions_per_s"] > 0 and system["peak_rss_gb"] > 0.1 and system["steps"] == 1
        assert 1 <= system["completion_tokens"] <= 8
    assert set(record["ratios"]) == {"llm_pg_vs_bare_s_per_step", "actor_critic_vs_reinforce_peak_rss"}
    assert "| llm_pg / bare compute s/step |" in md.read_text()
