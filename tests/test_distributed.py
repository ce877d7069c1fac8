"""llm_pg/models/sharding.py: generation, saving and optimizer state when parameters are sharded across processes.

What runs for real here (CPU): FSDP2 (`fully_shard`) over two gloo processes, generating through
gathered_for_generation; and the trainer's sharded code paths (whole weights passed as a state dict, the optimizer
through accelerator.save_state/load_state, lockstep evaluation) on one process with the backend forced.
DeepSpeed is not installed and FSDP1 refuses CPU-only execution: their branches are checked with fakes that
record what the context manager calls.
"""

from __future__ import annotations

import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp
from accelerate.utils import DistributedType
from helpers import tiny_config
from safetensors.torch import load_file
from test_reliability import assert_bit_equal, free_port, read_metrics, tensors

import llm_pg.models.sharding as distributed
import llm_pg.evaluation.periodic as periodic_eval
from llm_pg.runs.checkpoint import SHARDED_STATE, checkpoint_dir, is_complete, latest_checkpoint
from llm_pg.models.sharding import Sharding, full_state_dict, gathered_for_generation, sharding_of
from llm_pg.training.rl import train
from llm_pg.models.value_head import VALUE_HEAD_FILE, ValueHead, save_value_head


def fake_accelerator(distributed_type=DistributedType.NO, zero_stage=None, fsdp_version=None, state_dict=None):
    calls = []
    plugin = SimpleNamespace(zero_stage=zero_stage) if zero_stage is not None else None
    fsdp = SimpleNamespace(fsdp_version=fsdp_version) if fsdp_version is not None else None
    return SimpleNamespace(
        distributed_type=distributed_type, calls=calls,
        state=SimpleNamespace(deepspeed_plugin=plugin, fsdp_plugin=fsdp),
        unwrap_model=lambda m: getattr(m, "module", m),
        get_state_dict=lambda m: calls.append(("get_state_dict", m)) or state_dict)


@pytest.mark.parametrize("accelerator, expected", [
    (fake_accelerator(), Sharding()),
    (fake_accelerator(DistributedType.MULTI_GPU), Sharding()),
    (fake_accelerator(DistributedType.DEEPSPEED, zero_stage=2), Sharding(deepspeed_stage=2)),
    (fake_accelerator(DistributedType.DEEPSPEED, zero_stage=3), Sharding(deepspeed_stage=3)),
    (fake_accelerator(DistributedType.FSDP, fsdp_version=1), Sharding(fsdp_version=1)),
    (fake_accelerator(DistributedType.FSDP, fsdp_version=2), Sharding(fsdp_version=2)),
])
def test_sharding_of_reads_the_accelerator(accelerator, expected):
    assert sharding_of(accelerator) == expected


def test_what_each_backend_shards():
    assert (Sharding().parameters, Sharding().optimizer) == (False, False)  # DDP, one device, CPU
    assert (Sharding(deepspeed_stage=2).parameters, Sharding(deepspeed_stage=2).optimizer) == (False, True)
    assert (Sharding(deepspeed_stage=3).parameters, Sharding(deepspeed_stage=3).optimizer) == (True, True)
    assert (Sharding(fsdp_version=1).parameters, Sharding(fsdp_version=2).optimizer) == (True, True)


# ------------------------------------------------------------------------------------ gathered_for_generation


class Wrapper(torch.nn.Module):
    """Stands for DDP / a DeepSpeed engine / FSDP1: the policy under .module."""

    def __init__(self, module):
        super().__init__()
        self.module = module


@pytest.mark.parametrize("distributed_type",
                         [DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.MULTI_CPU])
def test_without_sharding_the_unwrapped_policy_is_yielded_and_nothing_gathered(distributed_type, monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # importing it would fail: it must not be touched
    policy = torch.nn.Linear(2, 2)
    with gathered_for_generation(fake_accelerator(distributed_type), Wrapper(policy)) as yielded:
        assert yielded is policy


def test_zero2_weights_are_whole_so_nothing_is_gathered(monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed", None)
    policy = torch.nn.Linear(2, 2)
    with gathered_for_generation(fake_accelerator(DistributedType.DEEPSPEED, zero_stage=2), Wrapper(policy)) as got:
        assert got is policy


class FakeHook:
    def __init__(self, log, name):
        self.log, self.name = log, name

    def remove(self):
        self.log.append(("remove", self.name))


def fake_zero3(monkeypatch):
    """A fake `deepspeed` module and a ZeRO-3 engine whose optimizer holds the parameter-offload hooks."""
    log = []

    class GatheredParameters:
        def __init__(self, params):
            self.params = params

        def __enter__(self):
            log.append(("gather", [id(p) for p in self.params]))

        def __exit__(self, *exc):
            log.append(("partition",))

    monkeypatch.setitem(sys.modules, "deepspeed", SimpleNamespace(zero=SimpleNamespace(
        GatheredParameters=GatheredParameters)))
    policy = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 2))
    for p in policy.parameters():
        p.ds_active_sub_modules = {1, 2}
    coordinator = SimpleNamespace(is_invalid_trace=lambda: False,
                                  _invalidate_trace=lambda: log.append(("invalidate_trace",)))
    offload = SimpleNamespace(module=policy, forward_hooks=[FakeHook(log, "fwd")],
                              backward_hooks=[FakeHook(log, "bwd")], get_param_coordinator=lambda: coordinator)

    def register(module):
        log.append(("register", module))
        offload.forward_hooks, offload.backward_hooks = [FakeHook(log, "fwd2")], [FakeHook(log, "bwd2")]

    offload._register_deepspeed_module = register
    engine = Wrapper(policy)
    engine.optimizer = SimpleNamespace(parameter_offload=offload)
    return engine, policy, offload, log


def test_zero3_gathers_every_parameter_and_pauses_the_engine_hooks(monkeypatch):
    engine, policy, offload, log = fake_zero3(monkeypatch)
    accelerator = fake_accelerator(DistributedType.DEEPSPEED, zero_stage=3)
    with gathered_for_generation(accelerator, engine) as yielded:
        assert yielded is policy
        assert log == [("gather", [id(p) for p in engine.parameters()]), ("remove", "fwd"), ("remove", "bwd")]
        assert offload.forward_hooks == [] and offload.backward_hooks == []  # generate() runs without them
        assert all(p.ds_active_sub_modules == set() for p in policy.parameters())
        log.clear()
    # hooks back (the engine's training forward needs them), the stale module trace dropped, then re-partitioned
    assert log == [("register", policy), ("invalidate_trace",), ("partition",)]
    assert [h.name for h in offload.forward_hooks] == ["fwd2"]


def test_zero3_hooks_come_back_when_generation_fails(monkeypatch):
    engine, policy, offload, log = fake_zero3(monkeypatch)
    with pytest.raises(RuntimeError, match="boom"):
        with gathered_for_generation(fake_accelerator(DistributedType.DEEPSPEED, zero_stage=3), engine):
            raise RuntimeError("boom")
    assert log[-3:] == [("register", policy), ("invalidate_trace",), ("partition",)]


def test_fsdp1_summons_the_roots_parameters_only_without_writeback(monkeypatch):
    from torch.distributed.fsdp import FullyShardedDataParallel

    log = []

    @contextmanager
    def summon(module, **kwargs):
        log.append(("summon", module, kwargs))
        yield
        log.append(("reshard",))

    monkeypatch.setattr(FullyShardedDataParallel, "summon_full_params", staticmethod(summon))
    policy = torch.nn.Linear(2, 2)
    wrapped = Wrapper(policy)
    with gathered_for_generation(fake_accelerator(DistributedType.FSDP, fsdp_version=1), wrapped) as yielded:
        assert yielded is policy
        assert log == [("summon", wrapped, {"recurse": False, "writeback": False})]
    assert log[-1] == ("reshard",)


def test_fsdp2_needs_no_summoning(monkeypatch):
    from torch.distributed.fsdp import FullyShardedDataParallel

    monkeypatch.setattr(FullyShardedDataParallel, "summon_full_params", None)  # calling it would fail
    policy = torch.nn.Linear(2, 2)
    with gathered_for_generation(fake_accelerator(DistributedType.FSDP, fsdp_version=2), policy) as yielded:
        assert yielded is policy


# ------------------------------------------------------------------------------- FSDP2 on two CPU processes


def _fsdp2_generation_worker(rank: int, port: int, model_dir: str, results):
    """Rank r shards the tiny policy (each decoder layer, then the root) and generates for its own prompts."""
    import os

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_pg.config.schema import GenerationConfig
    from llm_pg.rollout.sampling import sample
    from llm_pg.models.value_head import attach_value_head

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        plain, model = (AutoModelForCausalLM.from_pretrained(model_dir).eval() for _ in range(2))
        for m in (plain, model):  # a value head with non-zero weights: its values must come out the same too
            attach_value_head(m)
            torch.nn.init.normal_(m.value_head.linear.weight, generator=torch.Generator().manual_seed(3))
        mesh = init_device_mesh("cpu", (2,))
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        shard_rows = next(model.parameters()).to_local().shape[0]
        # Rank 1's greedy completions end after 4 tokens, rank 0's run to 12: rank 1 must keep stepping.
        texts = ["the cat sees", "a dog"] if rank == 0 else ["my friend runs to"]
        prompts = [tokenizer(t)["input_ids"] for t in texts]
        config = GenerationConfig(num_samples=2, max_new_tokens=12)
        accelerator = SimpleNamespace(distributed_type=DistributedType.FSDP, unwrap_model=lambda m: m,
                                      state=SimpleNamespace(fsdp_plugin=SimpleNamespace(fsdp_version=2)))
        with gathered_for_generation(accelerator, model) as policy:
            torch.manual_seed(7 + rank)
            sampled = sample(policy, tokenizer, prompts, config)
            greedy = sample(policy, tokenizer, prompts, config, greedy=True)
        torch.manual_seed(7 + rank)
        expected, expected_greedy = sample(plain, tokenizer, prompts, config), \
            sample(plain, tokenizer, prompts, config, greedy=True)

        def same(got, want) -> bool:  # the lockstep may add steps after this process's end: pad only
            T = want.completion_ids.shape[1]
            return torch.equal(got.completion_ids[:, :T], want.completion_ids) and \
                bool((got.completion_ids[:, T:] == tokenizer.pad_token_id).all())

        T = expected.completion_ids.shape[1]
        results[rank] = {
            "shard_rows": shard_rows, "vocab": plain.get_input_embeddings().weight.shape[0],
            "greedy_lengths": greedy.lengths.tolist(), "greedy_steps": greedy.completion_ids.shape[1],
            "same_tokens": same(sampled, expected), "same_greedy": same(greedy, expected_greedy),
            "same_lengths": torch.equal(sampled.lengths, expected.lengths),
            "logprob_error": (sampled.logprobs[:, :T] - expected.logprobs).abs().max().item(),
            "value_error": (sampled.values[:, :T] - expected.values).abs().max().item()}
    finally:
        dist.destroy_process_group()


def test_fsdp2_generation_on_two_cpu_processes_matches_the_unsharded_policy(tiny_model_dir):
    port = free_port()
    results = mp.Manager().dict()
    workers = mp.spawn(_fsdp2_generation_worker, args=(port, str(tiny_model_dir), results), nprocs=2, join=False)
    deadline = time.monotonic() + 240
    while not workers.join(timeout=1):  # a process that stopped decoding early would leave the other hanging
        if time.monotonic() > deadline:
            for process in workers.processes:
                process.kill()
            pytest.fail("FSDP2 generation hung: the processes did not decode in lockstep")
    # The embedding's rows were split between the two processes: the weights really were sharded.
    assert results[0]["shard_rows"] + results[1]["shard_rows"] == results[0]["vocab"] > results[0]["shard_rows"]
    # Rank 1's greedy rows ended first, yet it stepped as long as rank 0: the lockstep was needed, and it held.
    assert max(results[1]["greedy_lengths"]) < max(results[0]["greedy_lengths"])
    assert results[0]["greedy_steps"] == results[1]["greedy_steps"]
    for rank in (0, 1):
        r = results[rank]
        assert r["same_tokens"] and r["same_greedy"] and r["same_lengths"], r
        assert r["logprob_error"] < 1e-5 and r["value_error"] < 1e-5, r


# ------------------------------------------------------------------------------------------ whole weights


def test_no_lockstep_in_a_single_process():
    assert not torch.distributed.is_initialized()
    assert distributed.generation_lockstep(torch.nn.Linear(1, 1)) is False


def test_full_state_dict_gathers_only_sharded_weights():
    weights = {"w": torch.ones(1)}
    model = torch.nn.Linear(1, 1)
    cases = [(fake_accelerator(state_dict=weights), False),
             (fake_accelerator(DistributedType.DEEPSPEED, zero_stage=2, state_dict=weights), False),
             (fake_accelerator(DistributedType.DEEPSPEED, zero_stage=3, state_dict=weights), True),
             (fake_accelerator(DistributedType.FSDP, fsdp_version=2, state_dict=weights), True)]
    for accelerator, gathered in cases:
        assert full_state_dict(accelerator, model) is (weights if gathered else None)
        assert accelerator.calls == ([("get_state_dict", model)] if gathered else [])


def test_value_head_is_saved_from_the_gathered_state_dict(tmp_path):
    policy = torch.nn.Module()
    policy.value_head = ValueHead(3)  # its own weights are zeros (or, sharded, empty)
    gathered = {"lm_head.weight": torch.ones(2, 3), "value_head.linear.weight": torch.tensor([[1.0, 2.0, 3.0]]),
                "value_head.linear.bias": torch.tensor([0.5])}
    save_value_head(policy, tmp_path, gathered)
    saved = load_file(str(tmp_path / VALUE_HEAD_FILE))
    assert saved.keys() == {"linear.weight", "linear.bias"}
    assert torch.equal(saved["linear.weight"], gathered["value_head.linear.weight"])
    assert torch.equal(saved["linear.bias"], gathered["value_head.linear.bias"])


# ------------------------------------------------------------- the trainer's sharded paths, on one CPU process

SHARDED_RUN = {"algorithm.name": "actor_critic", "generation.temperature": 0.7, "training.max_steps": 4,
               "training.save_every": 2, "training.keep_checkpoints": 5, "data.split_fractions": [0.5, 0.25, 0.25],
               "evaluation.eval_every": 2, "evaluation.metric": "rougeL", "evaluation.after_training": True,
               # sharded weights ship the last policy (final_policy: best falls back with a warning): compare like
               "evaluation.final_policy": "last"}


def force_fsdp2(monkeypatch):
    """sharding_of says FSDP2: every sharded path runs, while one CPU process holds the whole model (so FSDP2's
    own generation, a no-op in gathered_for_generation, is the plain one and get_state_dict is state_dict)."""
    forced = lambda accelerator: Sharding(fsdp_version=2)  # noqa: E731
    monkeypatch.setattr(distributed, "sharding_of", forced)
    monkeypatch.setattr(periodic_eval, "sharding_of", forced)


def policy_files(folder: Path) -> dict:
    return {**tensors(folder), **{f"head.{k}": v for k, v in load_file(str(folder / VALUE_HEAD_FILE)).items()}}


def test_sharded_paths_train_save_and_resume_exactly_as_the_plain_ones(tiny_model_dir, tiny_data_file, tmp_path,
                                                                        monkeypatch):
    plain = train(tiny_config(tiny_model_dir, tiny_data_file, tmp_path / "plain", **SHARDED_RUN))
    force_fsdp2(monkeypatch)
    sharded = train(tiny_config(tiny_model_dir, tiny_data_file, tmp_path / "sharded", **SHARDED_RUN))

    run_dir = tmp_path / "sharded"
    for step in (2, 4):  # the optimizer went through accelerator.save_state, not optimizer.pt
        checkpoint = checkpoint_dir(run_dir, step)
        assert (checkpoint / SHARDED_STATE).is_dir() and not (checkpoint / "optimizer.pt").exists()
        assert is_complete(checkpoint)
    assert not list((run_dir / "checkpoints").glob(".sharded-*"))  # the staging folders were moved in
    for folder in ("final", "best", "checkpoints/step-000004/model"):  # weights passed to save_pretrained
        assert_bit_equal(policy_files(run_dir / folder), policy_files(tmp_path / "plain" / folder))
    assert sharded["eval_after"] == plain["eval_after"]  # perplexity from a reloaded start == the copied one
    assert "perplexity" in sharded["eval_after"]

    # Resume from step 2 of the sharded run: accelerator.load_state restores the optimizer.
    shutil.rmtree(checkpoint_dir(run_dir, 4))
    shutil.rmtree(run_dir / "final")
    assert latest_checkpoint(run_dir) == checkpoint_dir(run_dir, 2)
    train(tiny_config(tiny_model_dir, tiny_data_file, run_dir, **SHARDED_RUN), resume=True)
    assert_bit_equal(policy_files(run_dir / "final"), policy_files(tmp_path / "plain" / "final"))
    timing = ("time/", "speed/")
    for mine, theirs in zip(read_metrics(run_dir), read_metrics(tmp_path / "plain"), strict=True):
        assert {k: v for k, v in mine.items() if not k.startswith(timing)} == \
            {k: v for k, v in theirs.items() if not k.startswith(timing)}


def test_loading_a_sharded_checkpoint_needs_the_accelerator(tmp_path):
    from llm_pg.runs.checkpoint import load_checkpoint

    (tmp_path / SHARDED_STATE).mkdir()
    with pytest.raises(ValueError, match="sharded optimizer state"):
        load_checkpoint(tmp_path, optimizer=None, scheduler=None)



# ------------------------------------------------------------------------------------------- prepare_backend


def deepspeed_accelerator(stage: int) -> SimpleNamespace:
    return SimpleNamespace(distributed_type=DistributedType.DEEPSPEED,
                           state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=stage,
                                                                                  deepspeed_config={})))


def test_prepare_backend_refuses_what_the_backend_cannot_run(tiny_model_dir, tiny_data_file, tmp_path):
    from llm_pg.models.sharding import prepare_backend
    from llm_pg.errors import ConfigError

    def config(**overrides):
        return tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **overrides)

    with pytest.raises(ConfigError, match=r"^training.gradient_accumulation_steps: DeepSpeed steps the optimizer"):
        prepare_backend(deepspeed_accelerator(2), config(**{"training.gradient_accumulation_steps": 2}))
    with pytest.raises(ConfigError, match=r"^kl.coef: the frozen KL reference is a copy"):
        prepare_backend(deepspeed_accelerator(3), config(**{"kl.coef": 0.1}))
    lora = {"model.lora.r": 4, "model.lora.target_modules": ["q_proj"]}
    accelerator = deepspeed_accelerator(3)  # with LoRA the reference is the policy with its adapters off
    assert prepare_backend(accelerator, config(**{"kl.coef": 0.1}, **lora)) == Sharding(deepspeed_stage=3)
    assert accelerator.state.deepspeed_plugin.deepspeed_config["gradient_accumulation_steps"] == 1
    for sharded in (deepspeed_accelerator(3), fake_accelerator(DistributedType.FSDP, fsdp_version=2)):
        with pytest.raises(ConfigError, match=r"^model.lora.merge_on_save: merging needs the whole weights"):
            prepare_backend(sharded, config(**lora, **{"model.lora.merge_on_save": True}))
    # ZeRO-2 keeps whole weights: merging is fine there; DDP and one device are never refused
    prepare_backend(deepspeed_accelerator(2), config(**lora, **{"model.lora.merge_on_save": True}))
    assert prepare_backend(fake_accelerator(), config(**{"training.gradient_accumulation_steps": 2, "kl.coef": 0.1},
                                                      **lora, **{"model.lora.merge_on_save": True})) == Sharding()
