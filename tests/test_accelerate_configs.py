"""configs/accelerate/: every launch config is read by Accelerate's own loader and launcher, says what matters,
is packaged and documented, and cpu.yaml really starts two processes.

Nothing here needs a GPU or DeepSpeed: the launcher's argument handling and the plugins Accelerate builds from
its environment run on CPU; the DeepSpeed and FSDP training itself cannot (see docs/scaling.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env, prepare_simple_launcher_cmd_env
from helpers import cli_env, tiny_config, write_config_yaml

from llm_pg.models.sharding import prepare_backend
from llm_pg.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "accelerate"
# file -> (distributed_type, num_processes, mixed_precision); the launcher each one takes is checked below.
EXPECTED = {
    "cpu.yaml": (DistributedType.MULTI_GPU, 2, "no"),  # torchrun, kept on CPU by ACCELERATE_USE_CPU=true
    "single_gpu.yaml": (DistributedType.NO, 1, "bf16"),
    "multi_gpu.yaml": (DistributedType.MULTI_GPU, 2, "bf16"),
    "deepspeed_zero2.yaml": (DistributedType.DEEPSPEED, 2, "bf16"),
    "deepspeed_zero3.yaml": (DistributedType.DEEPSPEED, 2, "bf16"),
    "fsdp.yaml": (DistributedType.FSDP, 2, "bf16"),
}


def test_every_config_is_listed():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_with_accelerates_loader_and_documents_itself(name):
    config = load_config_from_file(str(CONFIGS / name))
    assert isinstance(config, ClusterConfig)
    assert (config.distributed_type, config.num_processes, config.mixed_precision) == EXPECTED[name]
    assert config.num_machines == 1 and config.compute_environment.value == "LOCAL_MACHINE"
    text = (CONFIGS / name).read_text()
    assert text.startswith("#")  # a header that says what the config is for
    assert f"accelerate launch --config_file configs/accelerate/{name} -m llm_pg train --config" in text


def test_cpu_config_asks_for_cpu_and_two_processes():
    config = load_config_from_file(str(CONFIGS / "cpu.yaml"))
    assert config.use_cpu is True and config.num_processes == 2
    assert "ACCELERATE_USE_CPU=true accelerate launch --config_file configs/accelerate/cpu.yaml" in \
        (CONFIGS / "cpu.yaml").read_text()


def test_deepspeed_configs_set_the_stage_and_offload():
    zero2 = load_config_from_file(str(CONFIGS / "deepspeed_zero2.yaml")).deepspeed_config
    zero3 = load_config_from_file(str(CONFIGS / "deepspeed_zero3.yaml")).deepspeed_config
    assert zero2["zero_stage"] == 2 and zero2["zero3_init_flag"] is False
    assert zero3["zero_stage"] == 3 and zero3["zero3_init_flag"] is True
    assert zero3["zero3_save_16bit_model"] is True  # accelerator.get_state_dict refuses to gather without it
    for ds in (zero2, zero3):
        assert ds["offload_optimizer_device"] == "none" and ds["offload_param_device"] == "none"
        assert ds["gradient_accumulation_steps"] == 1  # prepare_backend requires 1


def test_fsdp_config_shards_llama_decoder_layers():
    fsdp = load_config_from_file(str(CONFIGS / "fsdp.yaml")).fsdp_config
    assert fsdp["fsdp_version"] == 2
    assert fsdp["fsdp_reshard_after_forward"] is True  # FULL_SHARD
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"
    assert fsdp["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    assert fsdp["fsdp_cpu_ram_efficient_loading"] is False  # every process needs the weights for the KL reference


# ------------------------------------------------------------------- what `accelerate launch` makes of each file


def launcher_env(name: str) -> tuple[SimpleNamespace, dict]:
    """What `accelerate launch --config_file configs/accelerate/<name> -m llm_pg train` decides: its arguments and
    the environment it would start the processes with (nothing is started)."""
    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / name), "-m", "llm_pg", "train"])
    args, defaults, mixed_precision_from_config = _validate_launch_command(args)
    if args.use_deepspeed:  # as launch_command does before the DeepSpeed launcher
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mixed_precision_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        return args, prepare_deepspeed_cmd_env(args)[1]
    if args.multi_gpu or args.use_fsdp:
        return args, prepare_multi_gpu_env(args)
    return args, prepare_simple_launcher_cmd_env(args)[1]


@pytest.mark.parametrize("name, launcher", [("cpu.yaml", "multi_gpu"), ("single_gpu.yaml", "simple"),
                                            ("multi_gpu.yaml", "multi_gpu"), ("deepspeed_zero2.yaml", "deepspeed"),
                                            ("deepspeed_zero3.yaml", "deepspeed"), ("fsdp.yaml", "fsdp")])
def test_launcher_accepts_each_config(name, launcher):
    args, env = launcher_env(name)
    chosen = "deepspeed" if args.use_deepspeed else "fsdp" if args.use_fsdp else \
        "multi_gpu" if args.multi_gpu else "simple"
    assert chosen == launcher
    assert int(args.num_processes) == EXPECTED[name][1]
    assert env["ACCELERATE_MIXED_PRECISION"] == EXPECTED[name][2]


def test_deepspeed_plugin_built_from_the_zero3_launch_and_prepared_by_llm_pg(monkeypatch, tiny_model_dir,
                                                                             tiny_data_file, tmp_path):
    """The plugin each process builds from the launcher's environment, then prepare_backend's settings in it."""
    from accelerate.utils import DeepSpeedPlugin
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    _, env = launcher_env("deepspeed_zero3.yaml")
    for key, value in env.items():
        if key.startswith("ACCELERATE_"):
            monkeypatch.setenv(key, value)
    try:
        plugin = DeepSpeedPlugin()
        ds = plugin.deepspeed_config
        assert plugin.zero_stage == 3 and plugin.zero3_init_flag is True
        assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
        assert ds["zero_optimization"]["offload_param"]["device"] == "none"
        accelerator = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED,
                                      state=SimpleNamespace(deepspeed_plugin=plugin))
        config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{"training.max_grad_norm": 0.5})
        prepare_backend(accelerator, config)
        assert ds["train_micro_batch_size_per_gpu"] == 2 * 2  # prompts_per_step * num_samples
        assert ds["gradient_accumulation_steps"] == 1 and ds["gradient_clipping"] == 0.5
        assert "train_batch_size" not in ds  # DeepSpeed derives it; a stale "auto"/number would clash
        with pytest.raises(ConfigError, match="kl.coef"):
            prepare_backend(accelerator, tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{"kl.coef": 0.1}))
    finally:
        unset_hf_deepspeed_config()  # the plugin registered itself with transformers (ZeRO-3 loading)


def test_fsdp_plugin_built_from_the_launch_wraps_each_llama_decoder_layer(monkeypatch, tiny_model_dir):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import StateDictType
    from transformers import AutoModelForCausalLM

    _, env = launcher_env("fsdp.yaml")
    for key, value in env.items():
        if key.startswith(("ACCELERATE_", "FSDP_")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.state_dict_type == StateDictType.SHARDED_STATE_DICT and plugin.cpu_ram_efficient_loading is False
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    plugin.set_auto_wrap_policy(model)
    wrapped = [name for name, module in model.named_modules()
               if plugin.auto_wrap_policy(module=module, recurse=False, nonwrapped_numel=0)]
    assert wrapped == ["model.layers.0", "model.layers.1"]  # one FSDP unit per decoder layer, nothing else


# ---------------------------------------------------------------------------------- packaging and documentation


def test_readme_and_scaling_doc_name_every_config_with_its_command():
    readme, scaling = (ROOT / "README.md").read_text(), (ROOT / "docs" / "scaling.md").read_text()
    for name in EXPECTED:
        command = f"accelerate launch --config_file configs/accelerate/{name} -m llm_pg train --config"
        assert command in readme, name
        assert f"configs/accelerate/{name}" in scaling, name
    assert "docs/scaling.md" in readme


# ----------------------------------------------------------------------------------------- a real CPU launch


def test_cpu_config_starts_two_processes(tiny_model_dir, tiny_data_file, tmp_path):
    """One training step through `accelerate launch --config_file configs/accelerate/cpu.yaml`: two processes of
    2 prompts x 2 samples each, so the step's metrics count 8 completions (one process alone would count 4)."""
    config = write_config_yaml(tmp_path / "c.yaml", tiny_model_dir, tiny_data_file, tmp_path / "run",
                               **{"training.max_steps": 1})
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "cpu.yaml"),
              "-m", "llm_pg", "train", "--config", str(config)]
    env = {**cli_env(), "ACCELERATE_USE_CPU": "true", "PYTHONPATH": str(ROOT) + os.pathsep +
           os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(launch, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    [metrics] = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert round(metrics["speed/completions_per_s"] * metrics["time/step_s"]) == 2 * 2 * 2
