"""A KV cache that is written in place while decoding, instead of copied whole at every token.

transformers' DynamicLayer grows by `torch.cat([keys, new], -2)`: each decoding step copies every layer's whole
cache, (N, heads, context, head_dim) keys and values, to append one position. On SmolLM2 at the demo's batch,
removing that copy makes a decoding step 0.90x as long (`scripts/profile_decoding.py`). A ReservedLayer keeps its
keys and values in a buffer with room for the tokens still to come and writes each new position into it; what
attention reads is the filled part of the buffer, a view with the same values and shape as the concatenation. The
arithmetic is the same, so the sampled tokens and their log-probs are unchanged (tests/test_kv_cache.py).

Decoding only (no gradient flows through the in-place writes). Caches of other kinds (sliding windows, quantized,
static, older transformers without cache layers) are left as they are.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer


class ReservedLayer(DynamicLayer):
    """A DynamicLayer whose keys and values are the first `length` positions of a larger buffer."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, room: int):
        super().__init__()
        self.room = room  # positions reserved beyond what is stored, for the tokens still to be decoded
        self.device = keys.device
        self.is_initialized = True
        self._key_buffer = self._value_buffer = None
        self._store(keys, values, 0)

    def _store(self, keys: torch.Tensor, values: torch.Tensor, extra: int) -> None:
        """Copy the whole cache into new buffers with `room` free positions after it and `extra` more filled."""
        N, H, L, D = keys.shape
        shape = (N, H, L + extra + self.room, D)
        self._key_buffer = keys.new_empty(shape)
        self._value_buffer = values.new_empty(shape)
        self._key_buffer[:, :, :L] = keys
        self._value_buffer[:, :, :L] = values
        self.keys, self.values = self._key_buffer[:, :, :L], self._value_buffer[:, :, :L]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        length, new = self.keys.shape[-2], key_states.shape[-2]
        fits = (self._key_buffer.shape[-2] >= length + new and self._key_buffer.shape[0] == key_states.shape[0]
                and self.keys.data_ptr() == self._key_buffer.data_ptr())  # not replaced by a crop or a reorder
        if not fits:
            self._store(self.keys, self.values, new)
        self._key_buffer[:, :, length:length + new] = key_states
        self._value_buffer[:, :, length:length + new] = value_states
        self.keys = self._key_buffer[:, :, :length + new]
        self.values = self._value_buffer[:, :, :length + new]
        return self.keys, self.values


def reserve(cache, room: int):
    """Turn each plain DynamicLayer of `cache` that holds states into a ReservedLayer with `room` free positions.

    Returns the same cache object (changed in place), or the cache untouched when it has no such layers.
    """
    layers = getattr(cache, "layers", None)
    if room <= 0 or not layers:
        return cache
    for i, layer in enumerate(layers):
        if type(layer) is DynamicLayer and layer.is_initialized and layer.keys is not None \
                and layer.keys.dim() == 4 and layer.keys.numel() > 0:
            layers[i] = ReservedLayer(layer.keys, layer.values, room)
    return cache
