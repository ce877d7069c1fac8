"""The pipeline's DPO arm (rlhf.dpo): switched on in a finished pipeline it trains DPO from the SFT policy on the
proxy reward model's pairs, redoes only the comparison (RL's numbers unchanged), evaluates DPO against SFT as RL is
evaluated and RL against DPO; a comparison made with DPO is not reused once it is switched off again, and its dpo/
goes when an earlier stage runs again. And scripts/sft_length.py (issue 28's "stronger start"), on the same
finished pipeline."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import cli_env, run_cli
from llm_pg.config.schema import config_from_dict
from llm_pg.errors import ConfigError
from llm_pg.pipelines.rlhf import DONE, run_pipeline, stages
from llm_pg.pipelines.rlhf_statistics import PolicySamples, compare, rl_vs_dpo
from test_rlhf import folder_digest, pipeline_run  # noqa: F401  (the finished tiny pipeline, once per module)

DPO = {"max_steps": 4, "batch_size": 4, "learning_rate": 1e-3, "beta": 0.5}



def rebatched(a, b, rel: float = 1e-6) -> bool:
    """a == b, numbers within rel: the quality stage scores every row's answers to a prompt in one batch, so a row
    added or removed re-batches the others, and a CPU's matrix products may round by batch shape (an AVX2 EPYC
    differs in the 7th digit where the Xeon gave the same bits). Strings, counts and keys must match exactly."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(rebatched(a[k], b[k], rel) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(rebatched(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=rel, abs=1e-12)
    return a == b

def test_the_dpo_arm_trains_on_the_proxy_pairs_and_is_compared_as_rl_is(pipeline_run, tmp_path):  # noqa: F811
    values, out, _ = pipeline_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    values = {**values, "rlhf": {**values["rlhf"], "output_dir": str(copy), "dpo": True}, "dpo": DPO}
    (tmp_path / "rlhf.yaml").write_text(yaml.safe_dump(values))
    finished = {k: v for k, v in folder_digest(copy).items() if k.split("/")[0] in ("data", "sft", "rm_proxy",
                                                                                    "rm_gold", "rl")}
    done = run_cli("rlhf", "--config", tmp_path / "rlhf.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "gold reward model: DPO - SFT" in done.stdout
    after = folder_digest(copy)
    assert {k: after.get(k) for k in finished} == finished  # the reward models and RL were not redone
    assert "stage rl is done" in done.stderr and (copy / "dpo" / DONE).is_file()

    # DPO learned from the SFT policy on the proxy half's pairs; its first step scores SFT against itself: log 2
    run = yaml.safe_load((copy / "dpo" / "config.yaml").read_text())
    assert run["rm"]["source"] == str(copy / "data" / "pairs_proxy") and run["rm"]["train_split"] == "train"
    assert run["model"]["name_or_path"] == str(copy / "sft" / "final")
    rows = [json.loads(line) for line in (copy / "dpo" / "dpo_metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and rows[0]["dpo/loss"] == pytest.approx(math.log(2), abs=1e-6)

    before = json.loads((out / "comparison.json").read_text())
    result = json.loads((copy / "comparison.json").read_text())
    assert {k: v for k, v in result.items() if k not in ("dpo_vs_sft", "rl_vs_dpo", "quality")} == \
        {k: v for k, v in before.items() if k != "quality"}  # RL's, unchanged
    quality, without = result["quality"], before["quality"]  # the answers' quality: a DPO row beside the same others
    assert rebatched({k: quality[k] for k in ("human", "resamples", "judge")},
                     {k: without[k] for k in ("human", "resamples", "judge")})
    assert rebatched({k: v for k, v in quality["policies"].items() if k != "dpo"}, without["policies"])
    assert rebatched(quality["vs_sft"]["rl"], without["vs_sft"]["rl"]) and set(quality["vs_sft"]) == {"rl", "dpo"}
    assert quality["vs_sft"]["dpo"]["perplexity"]["difference"] == pytest.approx(
        quality["policies"]["dpo"]["perplexity"] - quality["policies"]["sft"]["perplexity"])
    dpo = result["dpo_vs_sft"]
    assert dpo["prompts"] == 6 and dpo["samples_per_prompt"] == 2
    assert dpo["gold"]["sft_mean"] == pytest.approx(before["gold"]["sft_mean"])  # the same SFT samples
    numbers = [dpo["kl_to_sft"], *dpo["length"].values()] + [
        dpo[rm][k] for rm in ("gold", "proxy") for k in ("rl_mean", "gain", "win_rate")]
    assert all(math.isfinite(x) for x in numbers) and dpo["kl_to_sft"] != 0
    assert set(dpo["gold"]["matched_length"]) == {"regression", "stratified"}
    samples = [json.loads(line) for line in (copy / "compare" / "samples_dpo.jsonl").read_text().splitlines()]
    assert np.mean([r["gold"] for r in samples]) == pytest.approx(dpo["gold"]["rl_mean"])
    assert np.mean([r["kl"] for r in samples]) == pytest.approx(dpo["kl_to_sft"])
    head_to_head = result["rl_vs_dpo"]["gold"]  # the same prompts: RL - DPO is the difference of their gains
    assert head_to_head["gain"] == pytest.approx(result["gold"]["gain"] - dpo["gold"]["gain"])
    assert head_to_head["dpo_mean"] == pytest.approx(dpo["gold"]["rl_mean"])
    report = (copy / "report.md").read_text()
    assert "## DPO policy vs SFT policy" in report and "win rate of DPO" in report and "KL(π_DPO ‖ π_SFT)" in report
    assert "## RL vs DPO" in report and "RL − DPO (95 % CI)" in report and "| DPO | " in report

    settled = folder_digest(copy)
    again = run_cli("rlhf", "--config", tmp_path / "rlhf.yaml", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    active = stages(config_from_dict(values))
    assert "dpo" in active and sum(f"stage {s} is done" in again.stderr for s in active) == len(active)
    assert folder_digest(copy) == settled

    off = config_from_dict({**values, "rlhf": {**values["rlhf"], "dpo": False}})
    with pytest.raises(ConfigError, match=r"stage compare .* was done with other settings \(rlhf.dpo: True -> None"):
        run_pipeline(off)  # a comparison with the DPO arm is not passed off as one without it
    shutil.rmtree(copy / "compare")  # as the refusal says: the comparison is redone, without the arm
    assert "dpo_vs_sft" not in run_pipeline(off)["compare"] and (copy / "dpo" / DONE).is_file()
    assert "dpo_vs_sft" not in json.loads((copy / "comparison.json").read_text())
    shutil.rmtree(copy / "rl")  # RL runs again: the dpo/ left from the arm is stale with the rest, and goes
    run_pipeline(off)
    assert not (copy / "dpo").exists() and (copy / "rl" / DONE).is_file()


def test_rl_vs_dpo_against_hand_computed_values():
    dpo = PolicySamples(proxy=np.array([[0.0, 1.0], [2.0, 2.0], [1.0, 0.0]]),
                        gold=np.array([[1.0, 0.0], [0.5, 0.5], [2.0, 1.0]]), lengths=np.array([[2, 4], [6, 6], [4, 2]]))
    rl = PolicySamples(proxy=np.array([[1.0, 1.0], [3.0, 1.0], [2.0, 2.0]]),
                       gold=np.array([[1.0, 1.0], [0.0, 1.0], [2.0, 3.0]]), lengths=np.array([[4, 4], [8, 6], [6, 2]]))
    r = rl_vs_dpo(dpo, rl, resamples=200)
    # gold per-prompt means: DPO 0.5, 0.5, 1.5; RL 1.0, 0.5, 2.5 -> RL - DPO 0.5, 0, 1 -> 0.5
    assert r["gold"]["dpo_mean"] == pytest.approx(2.5 / 3) and r["gold"]["rl_mean"] == pytest.approx(4 / 3)
    assert r["gold"]["gain"] == pytest.approx(0.5) and r["gold"]["win_rate"] == pytest.approx(2 / 3)
    assert r["proxy"]["gain"] == pytest.approx((0.5 + 0 + 1.5) / 3) and r["prompts"] == 3
    assert "sft_mean" not in r["gold"]
    as_sft = compare(dpo, rl, resamples=200)["gold"]  # the same statistics as RL vs SFT, DPO in SFT's place
    assert r["gold"] == {("dpo_mean" if k == "sft_mean" else k): v for k, v in as_sft.items()}
    with pytest.raises(ValueError, match="must be paired"):
        rl_vs_dpo(dpo, PolicySamples(rl.proxy[:2], rl.gold[:2], rl.lengths[:2]))


def test_sft_length_script_samples_as_the_compare_stage_and_a_same_length_sft_is_the_pipelines(pipeline_run,  # noqa: F811
                                                                                                 tmp_path):
    """scripts/sft_length.py with --steps equal to the pipeline's sft.max_steps trains the pipeline's SFT policy
    again: its samples are the compare stage's SFT samples byte for byte, its gains over SFT are 0, and the quality
    rows of the re-sampled SFT policy are SFT's; the starting model is another policy."""
    values, out, _ = pipeline_run
    script = Path(__file__).resolve().parents[1] / "scripts" / "sft_length.py"
    steps = values["sft"]["max_steps"]
    done = subprocess.run([sys.executable, str(script), "--config", str(out.parent / "rlhf.yaml"), "--pipeline",
                           str(out), "--out", str(tmp_path / "len"), "--steps", str(steps)], cwd=out.parent,
                          env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    samples = tmp_path / "len" / "compare"
    sft = (out / "compare" / "samples_sft.jsonl").read_bytes()
    assert (samples / f"samples_sft{steps}.jsonl").read_bytes() == sft
    assert (samples / "samples_sftcopy.jsonl").read_bytes() == sft
    result = json.loads((tmp_path / "len" / "sft_length.json").read_text())
    for name in ("sftcopy", f"sft{steps}"):
        assert result[name]["gold"]["gain"] == 0 and result[name]["proxy"]["gain"] == 0
        assert result["quality"]["policies"][name] == result["quality"]["policies"]["sft"]
    assert (samples / "samples_start.jsonl").read_bytes() != sft
    comparison = json.loads((out / "comparison.json").read_text())
    assert rebatched(result["quality"]["policies"]["sft"], comparison["quality"]["policies"]["sft"])
    assert rebatched(result["quality"]["human"], comparison["quality"]["human"])
