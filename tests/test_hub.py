"""`llm-pg push` and hub.push, offline: HfApi's create_repo / create_branch / create_commit are intercepted, and the
test asserts the exact files of the commit, the model card's metadata, and that the token leaks nowhere."""

from __future__ import annotations

import json
import logging

import pytest
import yaml
from huggingface_hub import HfApi

from helpers import CAN_LEARN, assert_one_line_error, tiny_config
from llm_pg.cli import main
from llm_pg.training.rl import train

TOKEN = "hf_SECRETtestTOKEN1234567890"
RUN = {"data.split_fractions": [0.5, 0.25, 0.25], "training.max_steps": 2, "evaluation.before_training": True,
       "evaluation.after_training": True}
MODEL_FILES = ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
RUN_FILES = ["eval_after.json", "eval_before.json", "plots/changes.png", "plots/entropy.png",
             "plots/length.png", "plots/reward.png", "report.md", "training_config.yaml", "README.md"]


class FakeHub:
    """Records what HfApi would send; no network."""

    def __init__(self, monkeypatch):
        self.calls, self.tokens = [], []
        hub = self

        def create_repo(api, repo_id, **kwargs):
            hub.tokens.append(api.token)
            hub.calls.append(("create_repo", repo_id, kwargs))

        def create_branch(api, repo_id, **kwargs):
            hub.calls.append(("create_branch", repo_id, kwargs))

        def create_commit(api, repo_id, operations, **kwargs):
            hub.tokens.append(api.token)
            hub.calls.append(("create_commit", repo_id, kwargs))
            hub.files = {op.path_in_repo: op.path_or_fileobj for op in operations}
            return type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "create_branch", create_branch)
        monkeypatch.setattr(HfApi, "create_commit", create_commit)

    def card(self) -> tuple[dict, str]:
        text = self.files["README.md"].decode()
        _, front, body = text.split("---\n", 2)
        return yaml.safe_load(front), body


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tiny_data_file, tmp_path_factory):
    path = tmp_path_factory.mktemp("hub_run")
    train(tiny_config(tiny_model_dir, tiny_data_file, path, **RUN))
    return path


@pytest.fixture
def hub(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return FakeHub(monkeypatch)


def test_push_uploads_exactly_the_run_files_and_a_model_card(run_dir, hub, capsys, caplog):
    with caplog.at_level(logging.DEBUG):
        assert main(["push", str(run_dir), "--repo-id", "someone/tiny-pg", "--revision", "rl-v1", "--public"]) == 0
    assert [c[0] for c in hub.calls] == ["create_repo", "create_branch", "create_commit"]
    assert hub.calls[0][2]["private"] is False and hub.calls[1][2]["branch"] == "rl-v1"
    assert hub.calls[2][2]["revision"] == "rl-v1"
    # final/selected.json says which policy final/ holds (evaluation.final_policy)
    assert sorted(hub.files) == sorted(MODEL_FILES + ["selected.json"] + RUN_FILES)
    assert hub.files["model.safetensors"] == str(run_dir / "final" / "model.safetensors")
    assert hub.files["training_config.yaml"] == str(run_dir / "config.yaml")

    meta, body = hub.card()
    after = json.loads((run_dir / "eval_after.json").read_text())["scores"]
    assert meta["library_name"] == "transformers"
    assert meta["tags"] == ["llm_pg", "reinforcement-learning", "policy-gradient", "reinforce"]
    assert "base_model" not in meta and "datasets" not in meta  # a local model and a local JSONL file
    index = meta["model-index"][0]
    assert index["name"] == "tiny-pg"
    result = index["results"][0]
    assert result["task"]["type"] == "text-generation"
    assert result["dataset"] == {"name": "tiny.jsonl", "type": "custom", "split": "test"}
    metrics = {m["name"]: m["value"] for m in result["metrics"]}
    assert metrics["ROUGE-L"] == round(after["rougeL"], 4) and metrics["BLEU (corpus, /100)"] == round(after["bleu"], 4)
    assert {m["type"] for m in result["metrics"]} == {"bleu", "chrf", "rouge", "reward", "perplexity"}
    assert "![changes.png](plots/changes.png)" in body and 'from_pretrained("someone/tiny-pg")' in body

    # the token went to HfApi and nowhere else
    assert hub.tokens == [TOKEN, TOKEN]
    out = capsys.readouterr()
    assert TOKEN not in out.out + out.err and TOKEN not in caplog.text
    assert all(TOKEN.encode() not in p.read_bytes() for p in run_dir.rglob("*") if p.is_file())
    assert TOKEN not in hub.files["README.md"].decode()


def test_push_metadata_names_hub_model_and_dataset(run_dir, hub, tmp_path):
    """Base model and datasets come from hub.base_model / hub.datasets (or Hub ids in model/data)."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["hub"].update({"repo_id": "someone/pg", "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
                          "datasets": ["EdinburghNLP/xsum"], "private": True})
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["push", str(copy)]) == 0  # repo id and privacy from the run's config
    assert hub.calls[0][1] == "someone/pg" and hub.calls[0][2]["private"] is True
    assert "create_branch" not in [c[0] for c in hub.calls]
    meta, body = hub.card()
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["datasets"] == ["EdinburghNLP/xsum"]
    assert meta["model-index"][0]["results"][0]["dataset"]["type"] == "EdinburghNLP/xsum"
    assert "[HuggingFaceTB/SmolLM2-135M-Instruct](https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct)" in body


def test_value_head_is_uploaded_when_present(run_dir, hub, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "final" / "value_head.safetensors").write_bytes(b"x")
    (copy / "final" / "optimizer.pt").write_bytes(b"x")  # pickles are never uploaded
    assert main(["push", str(copy), "--repo-id", "a/b"]) == 0
    assert "value_head.safetensors" in hub.files and "optimizer.pt" not in hub.files


def test_push_errors_are_one_line(run_dir, monkeypatch, tmp_path, capsys):
    FakeHub(monkeypatch)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no cached login either
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    assert main(["push", str(run_dir), "--repo-id", "a/b"]) == 2
    assert_one_line_error(capsys.readouterr().err, "HF_TOKEN", "hf auth login")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert main(["push", str(run_dir)]) == 2  # no repo id anywhere
    assert_one_line_error(capsys.readouterr().err, "hub.repo_id")
    assert main(["push", str(run_dir), "--repo-id", "noslash"]) == 2
    assert_one_line_error(capsys.readouterr().err, "hub.repo_id", "user/name")
    assert main(["push", str(run_dir), "--repo-id", "a/b", "--folder", "best"]) == 2
    assert_one_line_error(capsys.readouterr().err, "hub.folder")
    assert main(["push", str(tmp_path), "--repo-id", "a/b"]) == 2
    assert_one_line_error(capsys.readouterr().err, "not a run folder")


def test_hub_push_true_pushes_at_the_end_of_training(tiny_model_dir, tiny_data_file, tmp_path, hub):
    train(tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{"hub.push": True, "hub.repo_id": "me/auto",
                                                                   "training.max_steps": 1, **CAN_LEARN}))
    assert [c[0] for c in hub.calls] == ["create_repo", "create_commit"]
    assert "report.md" in hub.files and "model.safetensors" in hub.files
    assert all(TOKEN.encode() not in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())


@pytest.mark.parametrize("error", [ConnectionError(f"no route to huggingface.co (token {TOKEN})\nmore detail"),
                                   TimeoutError()])
def test_any_upload_failure_is_one_line_naming_repo_and_cause_never_the_token(run_dir, hub, monkeypatch, capsys,
                                                                              error):
    def create_commit(api, repo_id, operations, **kwargs):
        raise error

    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    assert main(["push", str(run_dir), "--repo-id", "someone/down"]) == 2
    err = capsys.readouterr().err
    assert_one_line_error(err, "someone/down", type(error).__name__)
    assert TOKEN not in err
