"""Shared fixtures: a tiny offline Llama policy (two tokenizer variants) and a tiny JSONL data set.

`tiny_config(model_dir, data_file, output_dir, **overrides)` and `SHARED` live in tests/helpers.py.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the network (set before any HF import)
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # 2 shared cores: more threads make these tiny models slower, not faster

from helpers import SHARED, TINYSTORIES, save_tiny_model, tiny_config, write_tiny_data  # noqa: E402,F401


def pytest_sessionstart(session):
    """CI (.ci/run sets LLM_PG_REQUIRE_SHARED=1) must not pass by skipping: the golden runs and every test of real
    weights need ../shared, so its absence there is an error, not a skip."""
    if os.environ.get("LLM_PG_REQUIRE_SHARED") == "1" and not (TINYSTORIES / "config.json").exists():
        pytest.exit(f"LLM_PG_REQUIRE_SHARED=1 but {SHARED} (LLM_PG_SHARED) has no models/tinystories-656k: the golden "
                    "runs and the real-weight tests would all skip", returncode=4)


# The files whose tests run longest (tens of seconds each: they start processes), longest first, collected before the
# rest. pytest-xdist's worksteal hands each worker a contiguous half of the collection and lets an idle worker take
# only from the end of the other's queue, so a 100-second test collected last keeps one core idle for its length.
# Only the order changes (every test still runs, each file's tests stay together); a stale list costs balance only.
# From `make test`'s --durations (docs/benchmarks.md, "Test time").
SLOW_FIRST = ("test_gpu_check.py", "test_compare_command.py", "test_process_streams.py", "test_compare_script.py",
              "test_bench_script.py", "test_gguf_cache.py", "test_chunked_head.py", "test_distributed.py",
              "test_grpo_distributed.py", "test_reliability.py", "test_rm_training.py", "test_accelerate_configs.py",
              "test_run_folder.py", "test_run_contract.py", "test_rlhf_frontier.py", "test_rlhf_dpo.py", "test_rlhf.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Folder with a tiny LlamaForCausalLM (safetensors) and its tokenizer (pad <pad>=0, bos <s>=1, eos </s>=2)."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def tiny_model_dir_pad_eos(tmp_path_factory):
    """The same weights, with a tokenizer whose pad token is its eos token (</s>=2), as many Hub models ship."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny_model_pad_eos"), pad_token="</s>")


@pytest.fixture(scope="session")
def tiny_data_file(tmp_path_factory):
    """24 JSONL rows {"id", "prompt", "reference"} in the tiny tokenizer's vocabulary."""
    return write_tiny_data(tmp_path_factory.mktemp("tiny_data") / "tiny.jsonl")


@pytest.fixture(scope="session")
def tinystories_dir():
    """The real pretrained ../shared/models/tinystories-656k; skips when the shared assets are absent."""
    if not (TINYSTORIES / "config.json").exists():
        pytest.skip("../shared (LLM_PG_SHARED) is absent: the real tinystories model is needed")
    return TINYSTORIES
