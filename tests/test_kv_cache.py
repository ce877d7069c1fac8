"""The in-place KV cache of the decoding loop: the same states, tokens and log-probs as the concatenating one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

import llm_pg.rollout.decoding as decoding
from helpers import TINYSTORIES, cli_env, requires_tinystories
from test_decoding import tiny  # noqa: F401  (the fixture: the tiny policy and left-padded prompts)
from llm_pg.rollout.kv_cache import ReservedLayer, reserve
from llm_pg.rollout.sampling import _shared_prompt_cache


def states(n: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, length, 4, generator=g), torch.randn(n, 2, length, 4, generator=g)


def test_a_reserved_layer_holds_what_concatenation_holds_and_never_rewrites_the_past():
    plain = DynamicLayer()
    keys, values = states(3, 5, 0)
    plain.update(keys, values)
    reserved = ReservedLayer(keys, values, room=2)
    for step in range(4):  # two steps fit the room, the next two need a larger buffer
        k, v = states(3, 1, step + 1)
        before = reserved.keys.clone()
        want, got = plain.update(k, v), reserved.update(k, v)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        assert torch.equal(reserved.keys[:, :, :-1], before)  # earlier positions untouched by the write
    assert reserved.get_seq_length() == plain.get_seq_length() == 9


def test_a_reserved_layer_stays_right_after_a_batch_repeat_and_a_crop():
    plain = DynamicLayer()
    keys, values = states(2, 4, 0)
    plain.update(keys, values)
    reserved = ReservedLayer(keys, values, room=8)
    for layer in (plain, reserved):
        layer.batch_repeat_interleave(3)  # (2, ...) -> (6, ...): a new tensor, the buffer no longer holds it
        layer.crop(-1)  # drop the last position
    for step in range(3):
        k, v = states(6, 1, step + 10)
        want, got = plain.update(k, v), reserved.update(k, v)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_reserve_changes_only_plain_dynamic_layers_that_hold_states():
    cache = DynamicCache()
    assert reserve(cache, 4) is cache  # nothing stored yet: nothing to change
    assert reserve(None, 4) is None and reserve("not a cache", 4) == "not a cache"


@pytest.mark.parametrize("shared_prompt", [False, True])
def test_decoding_draws_the_same_tokens_and_log_probs_with_the_in_place_cache(tiny, monkeypatch, shared_prompt):
    model, tokenizer, ids, mask = tiny
    K = 3
    rows, row_mask = ids.repeat_interleave(K, 0), mask.repeat_interleave(K, 0)

    def sample():
        torch.manual_seed(0)
        cache = _shared_prompt_cache(model, ids, mask, K) if shared_prompt else None
        return decoding.decode(model, rows, row_mask, 10, [], tokenizer.pad_token_id, temperature=0.9,
                               cache=cache)

    seen = []
    real_reserve = decoding.reserve
    monkeypatch.setattr(decoding, "reserve", lambda cache, room: seen.append(real_reserve(cache, room)) or seen[-1])
    reserved = sample()
    assert seen and all(type(layer) is ReservedLayer for layer in seen[0].layers)  # the in-place cache was used
    monkeypatch.setattr(decoding, "reserve", lambda cache, room: cache)
    concatenated = sample()
    assert torch.equal(reserved.tokens, concatenated.tokens)
    assert torch.equal(reserved.logprobs, concatenated.logprobs)  # bit for bit, not only close
    assert len(set(map(tuple, reserved.tokens.tolist()))) > 1  # a real sample, not a constant


@requires_tinystories
def test_profile_decoding_script_times_both_caches_and_groups_the_operators(tmp_path):
    """scripts/profile_decoding.py on the real tiny model: both loops timed, every operator share a percentage."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "profile_decoding.py"
    command = [sys.executable, str(script), "--model", str(TINYSTORIES), "--rounds", "1", "--max-new-tokens", "4",
               "--threads", "1"]
    out = subprocess.run(command, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in out.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| loop") and not line.startswith("| operators")}
    for loop in ("concatenating KV cache (before)", "in-place KV cache"):
        step, forward, own = (float(x) for x in rows[loop])
        assert 0 < forward < step and own == pytest.approx(step - forward, abs=0.11)  # printed to 0.1 ms
    shares = [float(cells[0].strip().rstrip("%")) for name, cells in rows.items() if len(cells) == 1]
    assert len(shares) == 6 and sum(shares) == pytest.approx(100, abs=0.5)
