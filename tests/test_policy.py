"""Loading the policy: a folder saved from a GGUF model loads, trains and saves again."""

from __future__ import annotations

import json
import shutil

from llm_pg.config import ModelConfig
from llm_pg.policy import load_policy


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
