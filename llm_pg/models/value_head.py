"""The critic: a scalar head V(s_t) on the policy's last hidden state, sharing the policy's trunk (no second model).

The hidden state is the input of the LM head (`get_output_embeddings()`), captured by a forward pre-hook, so the
value of state s_t is read at exactly the position whose logits give pi(.|s_t), for any causal LM, without a second
forward pass: during generate() (the rollout's values) and during the update (the values trained).
The head is an attribute `value_head` of the policy, so DDP synchronizes its gradients, but it is kept out of the
policy's `model.safetensors` and saved beside it as `value_head.safetensors`.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

VALUE_HEAD_FILE = "value_head.safetensors"


class ValueHead(nn.Module):
    """V(s_t) = w . h_t + b, in float32.  hidden (N, T, H) -> values (N, T).

    detach_trunk: the critic's gradient stops at the head, so only the policy loss moves the shared trunk.
    """

    def __init__(self, hidden_size: int, detach_trunk: bool = True):
        super().__init__()
        self.detach_trunk = detach_trunk
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)  # V = 0 at first: no value is better informed than another
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden.detach() if self.detach_trunk else hidden
        with torch.autocast(hidden.device.type, enabled=False):  # float32 even inside a mixed-precision region
            return self.linear(hidden.float()).squeeze(-1)


def value_head_of(model: nn.Module) -> ValueHead | None:
    return getattr(getattr(model, "module", model), "value_head", None)  # looks through a DDP wrapper


def attach_value_head(policy: nn.Module, detach_trunk: bool = True, path: str | Path | None = None) -> ValueHead:
    """Add `policy.value_head` (loaded from path/value_head.safetensors when that file exists)."""
    head = ValueHead(policy.get_output_embeddings().in_features, detach_trunk)
    if path is not None and (Path(path) / VALUE_HEAD_FILE).exists():
        head.load_state_dict(load_file(Path(path) / VALUE_HEAD_FILE))
    head.to(policy.get_output_embeddings().weight.device)
    policy.value_head = head
    policy._keys_to_ignore_on_save = set(policy._keys_to_ignore_on_save or ()) | {
        f"value_head.{name}" for name in head.state_dict()}  # save_pretrained writes the policy alone
    return head


def save_value_head(policy: nn.Module, path: str | Path, state_dict: dict | None = None) -> None:
    """`state_dict`: the policy's whole weights (value_head.* among them) when the head's own are sharded."""
    head = value_head_of(policy)
    if head is not None:
        weights = head.state_dict() if state_dict is None else {
            k.removeprefix("value_head."): v for k, v in state_dict.items() if k.startswith("value_head.")}
        save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, Path(path) / VALUE_HEAD_FILE)


@contextmanager
def captured_hidden_states(model: nn.Module, enabled: bool = True):
    """Collect the LM head's input (the last hidden states, (N, L, H) per call) for every forward in the block."""
    captured: list[torch.Tensor] = []
    if not enabled:
        yield captured
        return
    lm_head = getattr(model, "module", model).get_output_embeddings()
    handle = lm_head.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    try:
        yield captured
    finally:
        handle.remove()
