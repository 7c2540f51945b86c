"""Fuzzy in-context recall: in-context recall where keys and values are motifs.

Vocabulary: keys [0, (V-1)//2), values [(V-1)//2, V-1), pad V-1. A key motif is 1..k_motif_size
distinct key tokens (train: size uniform per pair; test: always k_motif_size), a value motif
1..v_motif_size distinct value tokens; a motif of a given size is uniform over ordered tuples of
distinct tokens. Within a sequence each key motif is bound to one value motif, drawn where the key
first appears.

Layout, as in the reference (athms/mad-lab, mad/data/instances.py:252-347): a probe pair (k*, v*)
and an offset uniform in [0, seq_len - 2 len(probe pair)) are drawn first. Pairs are laid down
one after another while the sequence is shorter than
`seq_len - len(probe pair) - (k_motif_size + v_motif_size)`; every appearance of k* is bound to
v*. The probe pair takes the slot of the first pair that would start at or after the offset,
unless k* already appeared in an earlier pair or no pair starts there (the offset lies past the
last one): then it is not inserted, and the final query may have no earlier answer (about 1-2%
of sequences at the baseline, as in the reference). The probe pair is then repeated at the end,
and the sequence is left-padded with the pad token to seq_len + 1 (at least two pads remain).

The model sees the sequence minus its last token (length seq_len). Train targets: the next token
everywhere (pad included, as in the reference). Test targets: the value tokens of pairs whose key
motif appeared in an earlier pair, and always the final probe value; -100 elsewhere.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from mad_jax.tasks import validation
from mad_jax.tasks.arrayops import first_occurrence, row_offsets, select
from mad_jax.tasks.motifs import distinct_tokens, motif_ids
from mad_jax.tasks.registry import IGNORE_INDEX, TaskSpec, register_task

TASK = "fuzzy-in-context-recall"


def min_vocab_size(k_motif_size: int, v_motif_size: int) -> int:
    """Smallest vocab_size with k distinct key tokens, v distinct value tokens and the pad."""
    return max(2 * k_motif_size + 1, 2 * v_motif_size)


def _validate(p: Mapping[str, Any]) -> None:
    km, vm = p["k_motif_size"], p["v_motif_size"]
    validation.at_least("k_motif_size", km, 1, TASK)
    validation.at_least("v_motif_size", vm, 1, TASK)
    validation.at_least(
        "vocab_size", p["vocab_size"], min_vocab_size(km, vm), TASK,
        f"keys need k_motif_size={km} distinct tokens in [0, (vocab_size-1)//2), values "
        f"v_motif_size={vm} distinct tokens in [(vocab_size-1)//2, vocab_size-1), plus the pad")
    validation.even("seq_len", p["seq_len"], TASK)
    validation.at_least("seq_len", p["seq_len"], 3 * (km + vm), TASK,
                        "3 * (k_motif_size + v_motif_size): a pair, the probe and its repeat")


def _slot_budget(L: int, km: int, vm: int, train: bool) -> tuple[int, int]:
    """(first draw, worst case) numbers of regular pair slots per row.

    Worst case: enough pairs that the last one starts at or past the body's end even if every pair
    is as short as possible. First draw: the expected number plus 8 standard deviations of an iid
    pair-length model (repeated keys reuse their value length, which widens the real spread: 8,
    not 5, measured over the grid), so that a second draw, up to the worst case, is rare.
    """
    min_pair = (1 if train else km) + 1
    body_max = L - min_pair - (km + vm)
    worst = -(-body_max // min_pair) + 1
    mean_k, var_k = ((km + 1) / 2, (km * km - 1) / 12) if train else (km, 0.0)
    mean_len, var_len = mean_k + (vm + 1) / 2, var_k + (vm * vm - 1) / 12
    expected = body_max / mean_len
    first = int(np.ceil(expected + 8 * np.sqrt(expected * var_len) / mean_len)) + 2
    return min(first, worst), worst


def _draw_pairs(rng, B: int, M: int, train: bool, km: int, vm: int, num_keys: int,
                num_values: int):
    """M candidate pairs per row: key sizes, value sizes [B, M]; key and value motifs [W, B, M]."""
    ksize = (rng.integers(1, km + 1, (B, M), dtype=np.int32) if train
             else np.full((B, M), km, np.int32))
    vsize = rng.integers(1, vm + 1, (B, M), dtype=np.int32)
    ktok = distinct_tokens(rng, (B, M), km, num_keys)
    vtok = distinct_tokens(rng, (B, M), vm, num_values)
    vtok += num_keys
    return ksize, vsize, ktok, vtok


def _make_chunk(rng: np.random.Generator, p: Mapping[str, Any], split: str, seed: int,
                inputs: np.ndarray, targets: np.ndarray) -> None:
    # Motif tokens are laid out position-first ([W, B, M]) so numpy works on long rows.
    del seed
    B = len(inputs)
    vocab, L, km, vm = p["vocab_size"], p["seq_len"], p["k_motif_size"], p["v_motif_size"]
    pad, num_keys = vocab - 1, (vocab - 1) // 2
    num_values = vocab - 1 - num_keys
    train = split == "train"
    pair_max = km + vm

    # The probe pair and where it goes.
    kprobe_size_B = (rng.integers(1, km + 1, B, dtype=np.int32) if train
                     else np.full(B, km, np.int32))
    vprobe_size_B = rng.integers(1, vm + 1, B, dtype=np.int32)
    kprobe_KxB = distinct_tokens(rng, (B,), km, num_keys)
    vprobe_VxB = distinct_tokens(rng, (B,), vm, num_values) + num_keys
    probe_len_B = kprobe_size_B + vprobe_size_B
    body_end_B = L - probe_len_B - pair_max  # a pair is laid down while the body is shorter
    probe_at_B = rng.integers(0, L - 2 * probe_len_B, dtype=np.int32)

    M, worst = _slot_budget(L, km, vm, train)
    pairs = _draw_pairs(rng, B, M, train, km, vm, num_keys, num_values)
    while True:
        ksize_BxM, vsize_BxM, ktok_KxBxM, vtok_VxBxM = pairs
        # Bind each key to the value drawn where it first appears, the probe key to the probe
        # value. Pair lengths follow, then where the probe goes and which pairs fit.
        ids_Bx1M, num_ids = motif_ids(
            np.concatenate([ktok_KxBxM, kprobe_KxB[:, :, None]], axis=2),
            np.concatenate([ksize_BxM, kprobe_size_B[:, None]], axis=1), num_keys)
        kid_BxM, probe_id_Bx1 = ids_Bx1M[:, :M], ids_Bx1M[:, M:]
        first_BxM = first_occurrence(kid_BxM, num_ids)
        is_probe_BxM = kid_BxM == probe_id_Bx1
        first_flat = first_BxM + row_offsets(B, M)
        vsize_BxM = select(is_probe_BxM, vprobe_size_B[:, None],
                           vsize_BxM.reshape(-1).take(first_flat))
        length_BxM = ksize_BxM + vsize_BxM
        start_BxM = np.cumsum(length_BxM, axis=1, dtype=np.int32)
        start_BxM -= length_BxM
        # The probe takes the place of pair j, the first that would start at or after probe_at,
        # and pairs j, j+1, ... move back by the probe's length; unless k* appeared before pair
        # j or pair j would start at or past body_end (the reference's loop then never inserts
        # it). Pairs starting at body_end go.
        before_probe_BxM = start_BxM < probe_at_B[:, None]
        probe_start_B = (length_BxM * before_probe_BxM).sum(axis=1, dtype=np.int32)
        inserted_B = probe_start_B < body_end_B
        inserted_B &= ~(is_probe_BxM & before_probe_BxM).any(axis=1)
        start_BxM += (~before_probe_BxM) * (probe_len_B * inserted_B)[:, None]
        keep_BxM = start_BxM < body_end_B[:, None]
        if not keep_BxM[:, -1].any():
            break
        if M == worst:
            raise AssertionError("fuzzy recall: too few pair slots drawn")
        # Rare: some row needs more pairs. Draw the rest for every row; rows that had enough
        # keep the same data (later pairs do not change earlier ones).
        extra = _draw_pairs(rng, B, worst - M, train, km, vm, num_keys, num_values)
        pairs = tuple(np.concatenate([a, b], axis=-1) for a, b in zip(pairs, extra))
        M = worst
    body_len_B = (length_BxM * keep_BxM).sum(axis=1, dtype=np.int32)
    body_len_B += probe_len_B * inserted_B
    L1 = L + 1  # the whole sequence: the model sees its first L tokens
    pad_B = L1 - body_len_B - probe_len_B  # left padding (>= 2)

    # All pairs as S = M + 2 slots: the regular pairs, then the inner probe and its final repeat.
    # A dropped pair (and an inner probe that is not inserted) gets sizes 0: it writes no tokens.
    S = M + 2

    def with_probes(regular, probe_value):
        out = np.empty(regular.shape[:-1] + (S,), regular.dtype)
        out[..., :M] = regular
        out[..., M:] = probe_value[..., None]
        return out

    ksize_BxS = with_probes(ksize_BxM * keep_BxM, kprobe_size_B)
    vsize_BxS = with_probes(vsize_BxM * keep_BxM, vprobe_size_B)
    ksize_BxS[:, M] *= inserted_B
    vsize_BxS[:, M] *= inserted_B
    start_BxS = with_probes(start_BxM, probe_start_B)
    start_BxS[:, M + 1] = body_len_B
    ktok_KxBxS = with_probes(ktok_KxBxM, kprobe_KxB)
    vtok_VxBxS = np.empty((vm, B, S), np.int32)
    for w in range(vm):
        vtok_VxBxS[w, :, :M] = select(is_probe_BxM, vprobe_VxB[w][:, None],
                                      vtok_VxBxM[w].reshape(-1).take(first_flat))
    vtok_VxBxS[:, :, M:] = vprobe_VxB[..., None]

    # Scatter every token to its flat index in a [B * L1] buffer; unused ones go to index B * L1.
    dump = B * L1
    at_BxS = start_BxS.astype(np.intp)
    at_BxS += row_offsets(B, L1) + pad_B[:, None]

    def positions(at, sizes, width):
        """Flat index of motif position w of each pair: at + w where w < size, else dump."""
        out = np.empty((width,) + at.shape, np.intp)
        from_dump = at - dump
        for w in range(width):
            np.add(from_dump, w, out=out[w])
            out[w] *= sizes > w
            out[w] += dump
        return out

    kidx_KxBxS = positions(at_BxS, ksize_BxS, km)
    at_BxS += ksize_BxS
    vidx_VxBxS = positions(at_BxS, vsize_BxS, vm)
    seq = np.full(dump + 1, pad, np.int32)
    seq[kidx_KxBxS] = ktok_KxBxS
    seq[vidx_VxBxS] = vtok_VxBxS
    seq_BxL1 = seq[:dump].reshape(B, L1)
    inputs[...] = seq_BxL1[:, :-1]
    if train:
        targets[...] = seq_BxL1[:, 1:]
        return

    # Test: score the values of keys seen in an earlier pair, and always the final repeat. An
    # inserted inner probe is the first appearance of k*, so it is never scored; pairs after it
    # with key k* are.
    scored_BxS = np.empty((B, S), bool)
    scored_BxS[:, :M] = first_BxM < np.arange(M)
    scored_BxS[:, :M] |= is_probe_BxM & ~before_probe_BxM & inserted_B[:, None]
    scored_BxS[:, M] = False
    scored_BxS[:, M + 1] = True
    labels = np.full(dump + 1, IGNORE_INDEX, np.int32)
    labels[vidx_VxBxS[:, scored_BxS]] = vtok_VxBxS[:, scored_BxS]
    targets[...] = labels[:dump].reshape(B, L1)[:, 1:]


def _token_label(token: int, p: Mapping[str, Any]) -> str:
    num_keys = (p["vocab_size"] - 1) // 2
    if token == p["vocab_size"] - 1:
        return "_"
    return f"k{token}" if token < num_keys else f"v{token}"


register_task(TaskSpec(
    name=TASK,
    defaults={"vocab_size": 16, "seq_len": 128, "k_motif_size": 3, "v_motif_size": 3},
    validate=_validate,
    make_chunk=_make_chunk,
    length=lambda p: p["seq_len"],
    token_label=_token_label,
))
