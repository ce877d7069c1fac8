"""Batches with one entry per row (Rollout, RolloutRewards): each field says once how its rows are picked and joined.

Dynamic sampling keeps some prompt groups of several sampling rounds and joins them into one batch. Rather than a
function that names every field of every batch (and silently drops a field added later), each field carries its
rule in its declaration, and `RowBatch.select_rows` / `RowBatch.concat` apply the rules of whatever fields there are:

    prompt_ids: torch.Tensor = per_row("left", pad=PAD_ID)  # (N, P)

Rules, for a batch of N rows:
    "rows"     a tensor (N, ...): picked by row index, joined by torch.cat
    "left"     a tensor (N, W): joined after padding each part on the left to the widest W, with `pad`
    "right"    the same, padded on the right
    "list"     a list of N items
    "columns"  a dict of name -> list of N items (every part has the same names)
    "index"    (N,) the row's prompt among the batch's prompts: renumbered 0, 1, ... in row order
    "shared"   not per row: the same value in every part, kept as it is
`pad` is a number, or PAD_ID for the tokenizer's pad id (given to `concat`). A field that may be None is None in
every part of a concatenation. A field without a rule is an error the first time rows are selected or joined.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

PAD_ID = "pad_id"  # pad with the tokenizer's pad id, which `concat` is given
RULES = ("rows", "left", "right", "list", "columns", "index", "shared")


def per_row(rule: str, pad: float | str = 0, **field_options) -> Any:
    """A dataclass field whose rows follow `rule` (module docstring); field_options go to dataclasses.field."""
    assert rule in RULES, rule
    return dataclasses.field(metadata={"rows": rule, "pad": pad}, **field_options)


def _rule(batch_type: type, field: dataclasses.Field) -> str:
    if "rows" not in field.metadata:
        raise TypeError(f"{batch_type.__name__}.{field.name} has no row rule: declare it with per_row(...) "
                        "(llm_pg/rollout/rows.py)")
    return field.metadata["rows"]


def pad_cat(tensors: list[torch.Tensor], value: float, left: bool) -> torch.Tensor:
    """Concatenate (n_i, W_i) tensors along rows, padding each to the widest W (on the left or right)."""
    width = max(t.shape[1] for t in tensors)
    padded = []
    for t in tensors:
        pad = (width - t.shape[1], 0) if left else (0, width - t.shape[1])
        padded.append(F.pad(t, pad, value=value))
    return torch.cat(padded)


def _pick(rule: str, value, rows: torch.Tensor, index: list[int]):
    """The entries of `value` at the given rows (a tensor, and the same as a list)."""
    if value is None or rule == "shared":
        return value
    if rule == "list":
        return [value[i] for i in index]
    if rule == "columns":
        return {name: [column[i] for i in index] for name, column in value.items()}
    picked = value[rows.to(value.device)]
    if rule == "index":  # the prompts of the chosen rows, numbered afresh in row order
        return torch.unique_consecutive(picked, return_inverse=True)[1]
    return picked


def _join(rule: str, pad: float | str, values: list, pad_id: int | None, name: str):
    """One field's parts joined along rows."""
    if any(v is None for v in values):
        if not all(v is None for v in values):
            raise ValueError(f"{name}: None in some parts only")
        return None
    if rule == "shared":
        if any(v != values[0] for v in values):
            raise ValueError(f"{name}: differs between parts ({values})")
        return values[0]
    if rule == "list":
        return [item for v in values for item in v]
    if rule == "columns":
        return {column: [item for v in values for item in v[column]] for column in values[0]}
    if rule == "index":  # each part's prompts come after the previous parts' prompts
        shifted, offset = [], 0
        for v in values:
            shifted.append(v + offset)
            offset += int(v.max()) + 1 if v.numel() else 0
        return torch.cat(shifted)
    if rule == "rows":
        return torch.cat(values)
    if pad == PAD_ID and pad_id is None:
        raise ValueError(f"{name}: pads with the tokenizer's pad id; give concat a pad_id")
    return pad_cat(values, pad_id if pad == PAD_ID else pad, left=rule == "left")


class RowBatch:
    """Mixin of a dataclass whose every field is declared with `per_row`: row selection and concatenation."""

    def select_rows(self, rows: torch.Tensor):
        """The batch of the given rows (a (n,) long tensor), in that order."""
        index = rows.tolist()
        return type(self)(**{f.name: _pick(_rule(type(self), f), getattr(self, f.name), rows, index)
                             for f in dataclasses.fields(self)})

    @classmethod
    def concat(cls, parts: list, pad_id: int | None = None):
        """One batch of the parts' rows, in order; (n_i, W_i) fields re-padded to the widest W."""
        if len(parts) == 1:  # already one batch
            return parts[0]
        return cls(**{f.name: _join(_rule(cls, f), f.metadata["pad"], [getattr(p, f.name) for p in parts], pad_id,
                                    f"{cls.__name__}.{f.name}")
                      for f in dataclasses.fields(cls)})
