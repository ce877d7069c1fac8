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
