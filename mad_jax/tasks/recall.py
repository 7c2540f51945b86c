"""In-context recall and noisy in-context recall (multi-query associative recall).

Vocabulary: keys [0, V'/2), values [V'/2, V'), noise [V', vocab_size), V' = vocab_size -
noise_vocab_size. A sequence is seq_len/2 two-token slots. Slots 0..P-2 (P = seq_len/2) are
key-value pairs, a key drawn uniformly and its value fixed per sequence by a binding table drawn
uniformly (the same law as drawing a value at the key's first appearance and reusing it after).
With frac_noise > 0, each of those slots but one (chosen uniformly) becomes two uniform noise
tokens with probability frac_noise. The last slot re-presents a key chosen uniformly among the
distinct keys that appeared, with its value.

The model sees the sequence minus its last token. Train targets: the next token everywhere.
Test targets: the value tokens of keys that appeared in an earlier slot (always including the
final probe value), -100 elsewhere.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from mad_jax.tasks import validation
from mad_jax.tasks.arrayops import gather_rows, select
from mad_jax.tasks.registry import IGNORE_INDEX, TaskSpec, register_task

_WORD = 64  # keys seen so far are tracked as bit sets, up to 64 keys per word


def _validate(task: str, p: Mapping[str, Any]) -> None:
    validation.at_least("seq_len", p["seq_len"], 4, task,
                        "at least one key-value pair and the probe")
    validation.even("seq_len", p["seq_len"], task)
    validation.at_least("noise_vocab_size", p["noise_vocab_size"], 0, task)
    validation.at_least(
        "vocab_size", p["vocab_size"], p["noise_vocab_size"] + 2, task,
        f"noise_vocab_size={p['noise_vocab_size']} noise tokens plus at least one key and "
        "one value")
    validation.fraction("frac_noise", p["frac_noise"], task)
    if p["frac_noise"] > 0 and p["noise_vocab_size"] < 1:
        raise ValueError(f"{task}: noise_vocab_size must be >= 1 when frac_noise > 0 "
                         f"(got frac_noise={p['frac_noise']}, noise_vocab_size=0)")


def _key_bits(keys_BxN: np.ndarray, num_keys: int):
    """The one-hot bit set of every key, as (word index, array) pairs: num_keys <= 64 fits one
    word of the narrowest unsigned dtype (uint8 at the baseline: low memory traffic)."""
    if num_keys <= _WORD:  # keys are uint8 here
        dtype = next(d for d in (np.uint8, np.uint16, np.uint32, np.uint64)
                     if np.iinfo(d).bits >= num_keys)
        return [(0, np.left_shift(dtype(1), keys_BxN))]
    words = []
    for w in range(-(-num_keys // _WORD)):
        in_word = (keys_BxN >> 6) == w
        words.append((w, np.left_shift(np.uint64(1), (keys_BxN & (_WORD - 1)).astype(np.uint8))
                      * in_word))
    return words


def _seen_before(keys_BxN: np.ndarray, real_BxN: np.ndarray | None, num_keys: int,
                 need_seen: bool):
    """Which slots hold a key already seen in an earlier real slot of the row (None unless
    need_seen), and the keys seen in the row, boolean [B, num_keys]. A running bitwise-or of
    one-hot bit sets along the row keeps it vectorised: O(B * N * ceil(num_keys / 64))."""
    B, N = keys_BxN.shape
    seen_BxN = np.zeros((B, N), bool) if need_seen else None
    present_BxK = np.empty((B, num_keys), bool)
    for w, bits_BxN in _key_bits(keys_BxN, num_keys):
        if real_BxN is not None:
            bits_BxN *= real_BxN
        if need_seen:
            acc_BxN = np.bitwise_or.accumulate(bits_BxN, axis=1)
            seen_BxN[:, 1:] |= (acc_BxN[:, :-1] & bits_BxN[:, 1:]) != 0
            row_Bx1 = acc_BxN[:, -1:]
        else:
            row_Bx1 = np.bitwise_or.reduce(bits_BxN, axis=1, keepdims=True)
        width = min(_WORD, num_keys - w * _WORD)
        one_hot = np.left_shift(np.ones(1, row_Bx1.dtype), np.arange(width, dtype=np.uint8))
        present_BxK[:, w * _WORD:w * _WORD + width] = (row_Bx1 & one_hot) != 0
    return seen_BxN, present_BxK


def _make_chunk(rng: np.random.Generator, p: Mapping[str, Any], split: str, seed: int,
                inputs: np.ndarray, targets: np.ndarray) -> None:
    del seed
    vocab, L = p["vocab_size"], p["seq_len"]
    V = vocab - p["noise_vocab_size"]
    K = V // 2
    B, N = len(inputs), L // 2 - 1  # N pair slots before the final probe
    test = split == "test"

    # uint8 keys where they fit: cheaper bit sets, index conversions and writes.
    keys_BxN = rng.integers(0, K, (B, N), dtype=np.uint8 if K <= 256 else np.int32)
    binding_BxK = rng.integers(K, V, (B, K), dtype=np.int32)
    values_BxN = gather_rows(binding_BxK, keys_BxN)
    real_BxN = None
    if p["frac_noise"] > 0:
        real_BxN = rng.random((B, N), dtype=np.float32) >= p["frac_noise"]
        real_BxN[np.arange(B), rng.integers(0, N, B)] = True  # at least one real pair per row
        noise_2xBxN = rng.integers(V, vocab, (2, B, N), dtype=np.int32)
    seen_BxN, present_BxK = _seen_before(keys_BxN, real_BxN, K, need_seen=test)
    # Uniform over the distinct keys present: argmax of uniform scores, +1 for present keys.
    probe_B = (rng.random((B, K)) + present_BxK).argmax(axis=1)
    probe_value_B = binding_BxK[np.arange(B), probe_B]
    if real_BxN is not None:
        keys_BxN = select(real_BxN, keys_BxN, noise_2xBxN[0])
        tokens_BxN = select(real_BxN, values_BxN, noise_2xBxN[1])
    else:
        tokens_BxN = values_BxN

    # Sequence token 2i is slot i's key, 2i+1 its value; tokens 2N, 2N+1 are the probe pair.
    # inputs column c holds token c (the last token is dropped), targets column c token c+1.
    inputs[:, 0:2 * N:2] = keys_BxN
    inputs[:, 1:2 * N:2] = tokens_BxN
    inputs[:, 2 * N] = probe_B
    if test:  # score the values of keys seen before, and the probe value
        targets[:, 1:2 * N:2] = IGNORE_INDEX
        targets[:, 0:2 * N:2] = select(seen_BxN, values_BxN, IGNORE_INDEX)
        targets[:, 2 * N - 1] = IGNORE_INDEX
    else:
        targets[:, 0:2 * N:2] = tokens_BxN
        targets[:, 1:2 * N - 1:2] = keys_BxN[:, 1:]
        targets[:, 2 * N - 1] = probe_B
    targets[:, 2 * N] = probe_value_B


def _token_label(token: int, p: Mapping[str, Any]) -> str:
    V = p["vocab_size"] - p["noise_vocab_size"]
    if token < V // 2:
        return f"k{token}"
    if token < V:
        return f"v{token}"
    return f"n{token}"


for _name, _defaults in (
        ("in-context-recall",
         {"vocab_size": 16, "seq_len": 128, "noise_vocab_size": 0, "frac_noise": 0.0}),
        ("noisy-in-context-recall",
         {"vocab_size": 32, "seq_len": 128, "noise_vocab_size": 16, "frac_noise": 0.2}),
):
    register_task(TaskSpec(
        name=_name,
        defaults=_defaults,
        validate=lambda p, _task=_name: _validate(_task, p),
        make_chunk=_make_chunk,
        length=lambda p: p["seq_len"] - 1,
        token_label=_token_label,
    ))
