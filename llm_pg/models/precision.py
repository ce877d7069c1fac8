"""Mixed precision (training.mixed_precision): bf16 or fp16 compute with float32 master weights.

The weights, their gradients and AdamW's state stay float32; the model's forward passes run under
`torch.autocast` (Accelerate wraps the prepared policy's forward, and the trainer runs each whole rollout, the
reference's scoring and the evaluations inside one autocast region, so each weight is cast once per region, not
once per decoded token). Log-probabilities, the loss and the sampler's CDF are computed in float32 / float64 from
the logits (rollout.py, decoding.py), and the value head runs in float32 (value_head.py).

Where bf16 is native -- CUDA GPUs that support it, and CPUs with the AVX512-BF16 or AMX-BF16 instructions -- its
matrix products are several times faster than float32 (docs/benchmarks.md); elsewhere a CPU emulates it, slower,
and on a model as small as tinystories-656k the casts cost more than they save.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

logger = logging.getLogger(__name__)
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")  # training.mixed_precision



def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has bf16 matrix instructions (x86 flags avx512_bf16 or amx_bf16; Linux /proc/cpuinfo)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text(errors="replace") if path.is_file() else ""
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[-1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def training_device() -> torch.device:
    """The device Accelerate will choose for a training process (before the Accelerator exists)."""
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "false").lower() in ("1", "true", "yes")
    return torch.device("cuda" if torch.cuda.is_available() and not use_cpu else "cpu")


def resolve_mixed_precision(setting: str) -> str:
    """'no', 'bf16' or 'fp16' for training.mixed_precision; 'auto' is `accelerate launch --mixed_precision` when
    given, else no.

    bf16 is not chosen by itself on a CPU with bf16 instructions, although it is faster there (docs/benchmarks.md):
    in the one demo run compared so far it reached a higher ROUGE-L but collapsed to three-word summaries (chrF
    fell, perplexity under the start model 19 instead of 6). Until more seeds show that is chance, bf16 is opt-in.
    """
    if setting != "auto":
        return setting
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "").lower()
    return launched if launched in ("no", "bf16", "fp16") else "no"


def warn_about_precision(dtype: str, mixed_precision: str, device: torch.device, field: str = "model.dtype") -> None:
    """One log line where the chosen precision is slow or lossy on this device; `field` names the setting that
    holds `dtype` (model.dtype, rm.dtype)."""
    if device.type == "cpu" and dtype in ("bfloat16", "float16"):
        logger.warning("%s=%s keeps the weights themselves in 16 bits (updates below their precision are lost); "
                       "training.mixed_precision=bf16 computes in bf16 with float32 weights instead", field, dtype)
    if device.type == "cpu" and mixed_precision == "bf16" and not cpu_has_native_bf16():
        logger.warning("training.mixed_precision=bf16: this CPU has no bf16 instructions (avx512_bf16 / amx_bf16), "
                       "so bf16 is emulated and slower than float32; set training.mixed_precision=no")
