"""Scale-out helpers: what changes when the policy's parameters or optimizer state are split across processes.

Under DDP, on one device or on CPU every process holds the whole model, and everything here is a no-op. Under
DeepSpeed ZeRO-3 and FSDP each process holds a shard of the parameters, so three things need care:

1. Generation.  Decoding runs the model once per new token.  `gathered_for_generation` yields the policy to
   call it on, with its parameters gathered (ZeRO-3: all at once; FSDP: the root's, the layers gather their own in
   their forward).  Gathering is collective: every process enters the block, and every process generates in
   lockstep (decoding.decode, like generate()'s `synced_gpus`: a process whose sequences are done keeps stepping
   until every process's are).  Evaluation therefore runs on every process under sharding (periodic_eval).
2. Saving.  `full_state_dict` gathers the whole weights (collective, every process calls it); the main process
   then writes them as an ordinary Hugging Face folder.
3. Optimizer state.  Each process holds its shard; `accelerator.save_state` / `load_state` write and read every
   shard in DeepSpeed's or FSDP's own format (checkpoint.py puts them in the checkpoint's `sharded_state/`).

See docs/scaling.md for the launch configs (configs/accelerate/) and what was tested without GPUs.
"""

from __future__ import annotations

import logging
import shutil
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import DistributedType

from llm_pg.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sharding:
    """How the prepared model is split across processes."""

    deepspeed_stage: int | None = None  # ZeRO stage under DeepSpeed, else None
    fsdp_version: int | None = None  # 1 (FullyShardedDataParallel) or 2 (fully_shard) under FSDP, else None

    @property
    def zero3(self) -> bool:
        return self.deepspeed_stage == 3

    @property
    def parameters(self) -> bool:
        """Each process holds only a shard of the weights (ZeRO-3, FSDP)."""
        return self.zero3 or self.fsdp_version is not None

    @property
    def optimizer(self) -> bool:
        """Each process holds only a shard of the optimizer state (every ZeRO stage, FSDP)."""
        return self.deepspeed_stage is not None or self.fsdp_version is not None


def sharding_of(accelerator) -> Sharding:
    state = accelerator.state
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return Sharding(deepspeed_stage=int(state.deepspeed_plugin.zero_stage))
    if accelerator.distributed_type == DistributedType.FSDP:
        return Sharding(fsdp_version=int(getattr(state.fsdp_plugin, "fsdp_version", 1) or 1))
    return Sharding()


def prepare_backend(accelerator, config) -> Sharding:
    """Reject what the backend cannot run, and give DeepSpeed the sizes it would otherwise take from a DataLoader.

    Called once, before `accelerator.prepare`.  A no-op on CPU, one device and DDP.
    """
    sharding = sharding_of(accelerator)
    if sharding.parameters and config.model.lora.r > 0 and config.model.lora.merge_on_save:
        raise ConfigError("model.lora.merge_on_save: merging needs the whole weights in one process, and ZeRO-3/FSDP "
                          "shard them; set it to false (final/ then holds the adapter) and merge it afterwards")
    if sharding.parameters and config.training.logits_chunk_tokens > 0:  # the LM head runs after the forward
        raise ConfigError("training.logits_chunk_tokens: the chunked LM head runs outside the model's forward, where "
                          "ZeRO-3/FSDP hold only a shard of its weight; set it to 0")
    if sharding.deepspeed_stage is None:
        return sharding
    t = config.training
    if t.gradient_accumulation_steps != 1:  # each accelerator.backward() is a DeepSpeed optimizer step
        raise ConfigError("training.gradient_accumulation_steps: DeepSpeed steps the optimizer inside every "
                          "backward, so llm_pg's micro-batching cannot accumulate there; set it to 1 (lower "
                          "training.prompts_per_step instead, or use configs/accelerate/fsdp.yaml)")
    if sharding.zero3 and config.kl.coef > 0 and config.model.lora.r == 0:  # (LoRA's reference is no copy)
        raise ConfigError("kl.coef: the frozen KL reference is a copy of the policy, which ZeRO-3 has already "
                          "partitioned; set kl.coef: 0, train LoRA adapters (model.lora.r > 0), or launch with "
                          "configs/accelerate/deepspeed_zero2.yaml or fsdp.yaml")
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    # llm_pg passes no DataLoader; DeepSpeed only logs this size (sequences per backward of a REINFORCE step).
    ds["train_micro_batch_size_per_gpu"] = max(1, t.prompts_per_step * config.generation.num_samples)
    ds["gradient_accumulation_steps"] = 1
    ds["gradient_clipping"] = t.max_grad_norm  # DeepSpeed clips inside its step; 0 = off, as training.max_grad_norm
    ds.pop("train_batch_size", None)  # DeepSpeed derives it from the two above (a stale number would clash)
    return sharding


@contextmanager
def gathered_for_generation(accelerator, model):
    """Yield the unwrapped policy, ready to decode; every process must enter (gathering is collective).

    - DeepSpeed ZeRO-3: all parameters are gathered for the block (deepspeed.zero.GatheredParameters) and the
      engine's per-module hooks are paused, so decoding runs on whole weights without re-gathering every layer at
      every token; the shards are put back on exit.
    - FSDP (v1): the root's own parameters (embeddings, final norm, LM head) are summoned without write-back;
      each wrapped decoder layer all-gathers its weights in its forward, as in training.
    - FSDP2 (fully_shard): nothing to do, every sharded module all-gathers in its forward hook.
    - DDP, one device, CPU, ZeRO-1/2: a no-op (the weights are whole).
    """
    sharding, policy = sharding_of(accelerator), accelerator.unwrap_model(model)
    if sharding.zero3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters())), _zero3_hooks_paused(model):
            yield policy
    elif sharding.fsdp_version == 1:
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(model, recurse=False, writeback=False):
            yield policy
    else:
        yield policy


@contextmanager
def _zero3_hooks_paused(engine):
    """Remove the ZeRO-3 engine's module hooks for the block and register them again after it.

    Inside GatheredParameters every parameter is whole already; the hooks would release each layer's parameters
    after its forward (re-partitioning them) and fetch them again for the next token.  After the block the
    coordinator's recorded module order is invalidated, since generation's forwards did not follow it.
    """
    offload = getattr(getattr(engine, "optimizer", None), "parameter_offload", None)
    if offload is None:  # no ZeRO-3 optimizer (e.g. an inference engine): leave the hooks alone
        yield
        return
    for param in offload.module.parameters():
        param.ds_active_sub_modules.clear()
    for hook in offload.forward_hooks + offload.backward_hooks:
        hook.remove()
    offload.forward_hooks, offload.backward_hooks = [], []
    try:
        yield
    finally:
        offload._register_deepspeed_module(offload.module)
        coordinator = offload.get_param_coordinator()
        if not coordinator.is_invalid_trace():
            coordinator._invalidate_trace()


def generation_lockstep(model) -> bool:
    """Whether every forward of `model` is collective (ZeRO-3 or FSDP over several processes), so that all
    processes must take the same number of decoding steps: the rule generate() applies as `synced_gpus`."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized() or \
            torch.distributed.get_world_size() == 1:
        return False
    from transformers.integrations import is_deepspeed_zero3_enabled

    return is_deepspeed_zero3_enabled() or getattr(getattr(model, "module", model), "_is_fsdp_managed_module", False)


def any_process(flag: torch.Tensor) -> bool:
    """flag (a 0-dim bool tensor) on any process; every process must call it."""
    flag = flag.float()
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


def full_state_dict(accelerator, model) -> dict | None:
    """The whole weights of a model whose parameters are sharded, on the main process (empty or partial on the
    others); None when every process holds them whole (then save_pretrained reads the model itself).

    Collective under ZeRO-3 and FSDP: every process must call it.  ZeRO-3 needs `zero3_save_16bit_model: true` in
    the Accelerate config (configs/accelerate/deepspeed_zero3.yaml sets it).
    """
    if not sharding_of(accelerator).parameters:
        return None
    return accelerator.get_state_dict(model)


def save_sharded_state(accelerator, run_dir, step: int) -> Path | None:
    """Under DeepSpeed/FSDP, every process writes its optimizer shard (and the model's, and its RNG) with
    accelerator.save_state into a staging folder that save_checkpoint then moves into the checkpoint; None when
    the optimizer state is whole on the main process (it goes to optimizer.pt).  Every process must call it."""
    if not sharding_of(accelerator).optimizer:
        return None
    folder = Path(run_dir) / "checkpoints" / f".sharded-step-{step:06d}"  # the same path on every process
    if accelerator.is_main_process:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(folder))
    accelerator.wait_for_everyone()
    return folder


def drain_collectives(accelerator, timeout_s: float = 10.0) -> None:
    """With gloo, return once its worker thread has let go of every finished collective's tensors.

    The thread frees them after the caller has moved on and needs the GIL to do so; if the DDP model (and with it
    the process group) is freed meanwhile, the process group's destructor joins that thread while holding the GIL
    and the process hangs at the end of a finished run (pytorch/pytorch#56297). Works run in order on that
    thread, so once a last all-reduce's tensor is released, every earlier one is too.
    """
    if accelerator.num_processes == 1 or torch.distributed.get_backend() != "gloo":
        return
    probe = torch.zeros(1)
    torch.distributed.all_reduce(probe)
    released, probe = weakref.ref(probe), None
    deadline = time.monotonic() + timeout_s
    while released() is not None and time.monotonic() < deadline:
        time.sleep(0.001)  # lets the worker thread take the GIL
