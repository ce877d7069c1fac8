"""Trackers as a user runs them: `llm-pg train` in a subprocess with `training.report_to: [tensorboard, wandb]`,
W&B in offline mode (no login, nothing sent). The metric names users see (README, "Logged metrics") reach both
trackers at the training steps of metrics.jsonl, and the completions table (evaluation.log_completions_every) reaches
W&B as a wandb.Table and TensorBoard as a markdown table in its Text tab."""

from __future__ import annotations

import json
import struct
import subprocess

import pytest

from helpers import CAN_LEARN, cli_command, cli_env, write_config_yaml

STEPS, EVERY = 4, 2
USER_METRICS = {"reward/mean", "reward/std", "reward/rougeL", "loss/policy", "policy/entropy", "policy/kl",
                "policy/grad_norm", "advantage/mean", "completion/length", "completion/truncated_frac", "train/lr",
                "speed/completions_per_s"}
EVAL_METRICS = {"eval/rougeL", "eval/bleu", "eval/reward"}


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def run(tiny_model_dir, tiny_data_file, tmp_path_factory):
    """One 4-step run logging to both trackers; validation every 2 steps, the completions table every 2 steps."""
    pytest.importorskip("wandb", reason="wandb is in the test extra: pip install -e '.[test]'")
    tmp = tmp_path_factory.mktemp("trackers")
    config = write_config_yaml(tmp / "config.yaml", tiny_model_dir, tiny_data_file, tmp / "run", **{
        "training.report_to": ["tensorboard", "wandb"], "training.max_steps": STEPS,
        "evaluation.log_completions_every": EVERY, "evaluation.eval_every": EVERY, "evaluation.metric": "rougeL",
        "data.split_fractions": [0.5, 0.25, 0.25], "training.save_final_model": False})
    env = {k: v for k, v in cli_env().items() if not k.startswith("WANDB_")}  # no key, no host, no project
    env.update(WANDB_MODE="offline", WANDB_DIR=str(tmp), WANDB_SILENT="true", HOME=str(tmp),
               WANDB_CONFIG_DIR=str(tmp / "wandb_config"), WANDB_CACHE_DIR=str(tmp / "wandb_cache"),
               WANDB_DATA_DIR=str(tmp / "wandb_data"),
               WANDB_BASE_URL="http://127.0.0.1:9")  # nothing listens there: an attempt to reach W&B would fail
    done = subprocess.run(cli_command("train", "--config", config), cwd=tmp, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = read_jsonl(tmp / "run" / "metrics.jsonl")
    completions = read_jsonl(tmp / "run" / "completions.jsonl")
    return tmp, metrics, completions


def by_step(metrics: list[dict]) -> dict[int, dict]:
    """metrics.jsonl has one line per step and one per validation; merged per step."""
    out: dict[int, dict] = {}
    for row in metrics:
        out.setdefault(row["step"], {}).update({k: v for k, v in row.items() if k != "step"})
    return out


# ------------------------------------------------------------------------------------------------ W&B, offline
def wandb_records(path):
    """The protobuf records of an offline run file (run-<id>.wandb): a 7-byte header (":W&B", magic, version), then a
    LevelDB-style log of 32 KiB blocks whose records have a 7-byte header (CRC-32, length, type: 1 full, 2 first,
    3 middle, 4 last). W&B's Python reader of this format left the package with its Go core."""
    from wandb.proto import wandb_internal_pb2

    data, pos, block, chunks = path.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B", path
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


@pytest.fixture(scope="module")
def wandb_run(run):
    """(history: step -> {key: value}, config keys, run folder) of the offline run."""
    tmp = run[0]
    folders = list((tmp / "wandb").glob("offline-run-*"))
    assert len(folders) == 1, list((tmp / "wandb").iterdir())
    history, config = {}, set()
    for record in wandb_records(next(folders[0].glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history.setdefault(items["_step"], {}).update(items)
        elif kind == "config":
            config |= {item.key or "/".join(item.nested_key) for item in record.config.update}
    return history, config, folders[0]


def test_wandb_offline_run_holds_every_metric_at_its_step(run, wandb_run):
    _, metrics, _ = run
    history, config, _ = wandb_run
    expected = by_step(metrics)
    assert sorted(history) == sorted(expected) == list(range(1, STEPS + 1))
    for step, values in expected.items():
        assert set(values) <= set(history[step]), (step, set(values) - set(history[step]))
        for key, value in values.items():
            assert history[step][key] == pytest.approx(value), (step, key)
    seen = set().union(*history.values())
    assert USER_METRICS | EVAL_METRICS <= seen, (USER_METRICS | EVAL_METRICS) - seen
    assert {"training.learning_rate", "algorithm.name", "model.name_or_path"} <= config  # the resolved config


def test_wandb_gets_the_completions_table(run, wandb_run):
    _, _, completions = run
    history, _, folder = wandb_run
    # a table is logged as a reference to its file, as nested keys (completions/_type, completions/path, ...)
    logged = {step: {k.split("/", 1)[1]: v for k, v in values.items() if k.startswith("completions/")}
              for step, values in history.items()}
    logged = {step: ref for step, ref in logged.items() if ref}
    assert sorted(logged) == list(range(EVERY, STEPS + 1, EVERY))
    for step, ref in logged.items():
        assert ref["_type"] == "table-file" and ref["ncols"] == 3
        table = json.loads((folder / "files" / ref["path"]).read_text(encoding="utf-8"))
        assert table["columns"] == ["prompt", "completion", "reward"]
        rows = [[r["prompt"], r["completion"], r["reward"]] for r in completions if r["step"] == step]
        assert len(rows) == 4 and table["data"] == rows  # 2 prompts x 2 samples, as in completions.jsonl


def test_wandb_ran_offline_without_a_login(run):
    """No API key and a server address that refuses connections (WANDB_BASE_URL, the run fixture): the run still
    finished, as an offline run, and wrote no credentials."""
    tmp = run[0]
    assert [p.name.startswith("offline-run-") for p in (tmp / "wandb").glob("*run-*")] == [True]
    assert not (tmp / ".netrc").exists()


# ------------------------------------------------------------------------------------------------- TensorBoard
@pytest.fixture(scope="module")
def tensorboard_run(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tmp = run[0]
    folders = {p.parent for p in (tmp / "run").rglob("events.out.tfevents.*")}
    assert folders
    scalars, texts = {}, {}
    for folder in folders:
        acc = EventAccumulator(str(folder), size_guidance={"tensors": 0, "scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
        for tag in acc.Tags()["tensors"]:
            texts.setdefault(tag, {}).update({e.step: e.tensor_proto.string_val[0].decode() for e in acc.Tensors(tag)})
    return scalars, texts


def test_tensorboard_scalars_are_the_metric_names_users_see(run, tensorboard_run):
    _, metrics, _ = run
    scalars, _ = tensorboard_run
    expected = by_step(metrics)
    assert USER_METRICS | EVAL_METRICS <= set(scalars), (USER_METRICS | EVAL_METRICS) - set(scalars)
    for step, values in expected.items():
        for key, value in values.items():
            assert scalars[key][step] == pytest.approx(value, rel=1e-6, abs=1e-7), (step, key)  # stored as float32
    assert sorted(scalars["reward/mean"]) == list(range(1, STEPS + 1))
    assert sorted(scalars["eval/rougeL"]) == list(range(EVERY, STEPS + 1, EVERY))


def test_tensorboard_text_tab_holds_the_completions_table(run, tensorboard_run):
    _, _, completions = run
    _, texts = tensorboard_run
    tag = next(t for t in texts if t.startswith("completions"))
    assert sorted(texts[tag]) == list(range(EVERY, STEPS + 1, EVERY))
    for step, table in texts[tag].items():
        lines = table.splitlines()
        assert lines[0] == "| prompt | completion | reward |"
        rows = [r for r in completions if r["step"] == step]
        assert len(lines) == 2 + len(rows)
        for line, row in zip(lines[2:], rows):
            assert line.startswith(f"| {row['prompt']} | ") and line.endswith(f" | {row['reward']} |")


def test_no_tracker_without_report_to(tiny_model_dir, tiny_data_file, tmp_path):
    """The default (report_to: []) writes metrics.jsonl and no tracker files."""
    config = write_config_yaml(tmp_path / "config.yaml", tiny_model_dir, tiny_data_file, tmp_path / "run",
                               **{"training.max_steps": 1, "training.save_final_model": False, **CAN_LEARN})
    env = {**cli_env(), "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path)}
    done = subprocess.run(cli_command("train", "--config", config), cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run" / "metrics.jsonl").exists()
    assert not list(tmp_path.rglob("events.out.tfevents.*")) and not (tmp_path / "wandb").exists()
