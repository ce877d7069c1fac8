"""Loading the policy: a folder saved from a GGUF model loads, trains and saves again."""

from __future__ import annotations

import json
import shutil

from llm_pg.config.schema import ModelConfig
from llm_pg.models.policy import load_policy


def test_a_folder_saved_from_a_gguf_model_saves_again(tiny_model_dir, tmp_path):
    """A GGUF-loaded model saved with save_pretrained keeps quantization_config {quant_method: gguf} in its
    config.json; loading that folder must not give a model that refuses to save (checkpoints, final/, SFT -> RL)."""
    folder = tmp_path / "from_gguf"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"dequantize": False, "gguf_file": "model.gguf", "quant_method": "gguf"}
    (folder / "config.json").write_text(json.dumps(config))

    model = load_policy(ModelConfig(name_or_path=str(folder)))
    model.save_pretrained(tmp_path / "saved", safe_serialization=True)  # raised ValueError before the fix
    assert "quantization_config" not in json.loads((tmp_path / "saved" / "config.json").read_text())


def test_load_errors_tell_a_missing_folder_from_an_unreachable_hub_id(monkeypatch):
    from llm_pg.models.policy import _explain

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = _explain(ModelConfig(name_or_path="./no/such/model"), OSError("x"))
    assert missing == "model.name_or_path: './no/such/model' not found (no such folder or file)"
    legacy = _explain(ModelConfig(name_or_path="gpt2"), OSError("We couldn't connect\nmore"))  # a Hub id, no owner
    assert legacy == ("model.name_or_path: cannot load 'gpt2' (offline: HF_HUB_OFFLINE is set, so Hub ids cannot "
                      "be downloaded): We couldn't connect")
