"""Linear attention with optional per-channel decay (GLA) and current-token bonus (RWKV 5/6).

State recurrence, per batch and head (S is [K, V], g = log_decay <= 0, or no decay when None):
    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t
    o_t = q_t S_t                                   (no bonus: linear attention, GLA)
    o_t = q_t (S_{t-1} + diag(u) k_t^T v_t)         (bonus u: RWKV 5/6)

The chunked form never multiplies exp(G_t) by exp(-G_s) (G the cumulative log decay): with decays as
strong as -20 per step those factors overflow float32 within a few steps. Every exponent it takes is
a sum of log decays over a span (a, b] with a <= b, so every factor lies in [0, 1]:
  * across chunks, the state is written with exp(G_end - G_s) and read with exp(G_t - G_start);
  * inside a chunk, sub-chunks of <= 16 steps: pairs in different sub-chunks split their span at the
    start of the later sub-chunk (a query factor times a key factor); pairs in the same sub-chunk
    use the pairwise [c, c, K] decay tensor directly.
Spans are summed directly (prefix/suffix sums inside a sub-chunk plus whole sub-chunk totals), not
as differences of long cumulative sums, which would lose float32 precision to cancellation.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mad_jax.ops import dispatch

_MAX_SUB_CHUNK = 16


def _sub_chunk_size(chunk_size: int) -> int:
    return max(c for c in range(1, min(chunk_size, _MAX_SUB_CHUNK) + 1) if chunk_size % c == 0)


def linear_attention_recurrent(q_BxHxLxK, k_BxHxLxK, v_BxHxLxV, *, log_decay_BxHxLxK=None,
                               bonus_HxK=None):
    """Oracle: the recurrence above as a lax.scan over time, in float32; returns q.dtype."""
    f32 = jnp.float32
    batch, heads, _, dk = q_BxHxLxK.shape
    dv = v_BxHxLxV.shape[-1]
    if log_decay_BxHxLxK is None:
        log_decay_BxHxLxK = jnp.zeros(q_BxHxLxK.shape, f32)
    seqs = [jnp.moveaxis(a.astype(f32), 2, 0)
            for a in (q_BxHxLxK, k_BxHxLxK, v_BxHxLxV, log_decay_BxHxLxK)]

    def step(s_BxHxKxV, inputs):
        q_BxHxK, k_BxHxK, v_BxHxV, g_BxHxK = inputs
        kv_BxHxKxV = k_BxHxK[..., :, None] * v_BxHxV[..., None, :]
        s_new = jnp.exp(g_BxHxK)[..., None] * s_BxHxKxV + kv_BxHxKxV
        if bonus_HxK is None:
            read = s_new
        else:
            read = s_BxHxKxV + bonus_HxK.astype(f32)[None, :, :, None] * kv_BxHxKxV
        return s_new, jnp.einsum("bhk,bhkv->bhv", q_BxHxK, read)

    s0 = jnp.zeros((batch, heads, dk, dv), f32)
    _, o_LxBxHxV = jax.lax.scan(step, s0, seqs)
    return jnp.moveaxis(o_LxBxHxV, 0, 2).astype(q_BxHxLxK.dtype)


def _shift(a, axis, forward):
    """a shifted by one along `axis` (forward: a[t-1] at t; backward: a[t+1] at t), zero-filled."""
    axis = axis % a.ndim
    pad = [(0, 0)] * a.ndim
    pad[axis] = (1, 0) if forward else (0, 1)
    keep = slice(None, -1) if forward else slice(1, None)
    return jnp.pad(a, pad)[tuple(keep if i == axis else slice(None) for i in range(a.ndim))]


def _decay_sums(g, inclusive, sub):
    """Log-decay partial sums for one chunk, all computed as sums of same-sign terms.

    g: [..., C, K] per-step log decay. Splitting C into n sub-chunks of `sub` steps, returns
    (with t, s positions inside their sub-chunk and i, j sub-chunk indices):
      lq  [..., n, c, K]: query-side prefix inside the sub-chunk, sum of g over (start, t]
                          (inclusive) or (start, t-1] (exclusive);
      lk  [..., n, c, K]: key-side prefix sum over (start, s];
      rk  [..., n, c, K]: key-side suffix sum over (s, end] inside the sub-chunk;
      tot [..., n, K]:    sub-chunk totals.
    Differences of long cumulative sums would lose precision to cancellation when decays are strong.
    """
    *lead, chunk, dk = g.shape
    n = chunk // sub
    g = g.reshape(*lead, n, sub, dk)
    lk = jnp.cumsum(g, axis=-2)
    lq = lk if inclusive else _shift(lk, -2, forward=True)
    rk = _shift(jnp.cumsum(g[..., ::-1, :], axis=-2)[..., ::-1, :], -2, forward=False)
    return lq, lk, rk, jnp.sum(g, axis=-2)


def _intra_chunk_scores(q, k, g, inclusive):
    """Decay-weighted causal scores inside each chunk.

    q, k, g: [..., C, K] float32 (g the per-step log decay, or None). Returns A [..., C, C] with
    A[t, s] = sum_k q_t k_s exp(Gq_t - G_s) on s <= t (s < t when not inclusive), 0 elsewhere,
    where G is the inclusive cumulative log decay and Gq = G (inclusive) or G - g (exclusive).
    """
    *lead, chunk, dk = q.shape
    pos = jnp.arange(chunk)
    causal_CxC = (pos[:, None] >= pos[None, :]) if inclusive else (pos[:, None] > pos[None, :])
    if g is None:
        return jnp.where(causal_CxC, jnp.einsum("...tk,...sk->...ts", q, k), 0.0)

    c = _sub_chunk_size(chunk)
    n = chunk // c
    lq, lk, rk, tot = _decay_sums(g, inclusive, c)
    q_n, k_n = q.reshape(*lead, n, c, dk), k.reshape(*lead, n, c, dk)

    # Pairs in different sub-chunks j < i: Gq_t - G_s = lq_t + sum(tot over j < m < i) + rk_s.
    idx = jnp.arange(n)
    i_, j_, m_ = idx[:, None, None], idx[None, :, None], idx[None, None, :]
    between_mask = (j_ < m_) & (m_ < i_)
    between = jnp.einsum("ijm,...mk->...ijk", between_mask.astype(g.dtype), tot)  # [..., i, j, K]
    k_exp = jnp.where((idx[None, :] < idx[:, None])[:, :, None, None],
                      between[..., :, :, None, :] + rk[..., None, :, :, :], -jnp.inf)
    k_dec = (k_n[..., None, :, :, :] * jnp.exp(k_exp)).reshape(*lead, n, chunk, dk)
    scores = jnp.einsum("...itk,...isk->...its", q_n * jnp.exp(lq), k_dec)  # [..., n, c, C]

    # Pairs inside one sub-chunk: the pairwise decay tensor [..., n, c, c, K].
    local = jnp.arange(c)
    causal_cxc = (local[:, None] >= local[None, :]) if inclusive else (
        local[:, None] > local[None, :])
    pair_exp = jnp.where(causal_cxc[:, :, None], lq[..., :, None, :] - lk[..., None, :, :],
                         -jnp.inf)
    diag = jnp.einsum("...itk,...isk,...itsk->...its", q_n, k_n, jnp.exp(pair_exp))
    scores = scores.reshape(*lead, n, c, n, c) + (
        diag[..., :, :, None, :] * jnp.eye(n, dtype=diag.dtype)[:, None, :, None])
    return scores.reshape(*lead, chunk, chunk)


def _inter_chunk_factors(g, inclusive):
    """Per chunk: exp(Gq_t) for reading the incoming state, exp(G_end - G_s) for writing to the
    outgoing state, and the whole-chunk decay exp(G_end), each from same-sign sums."""
    *lead, chunk, dk = g.shape
    lq, _, rk, tot = _decay_sums(g, inclusive, _sub_chunk_size(chunk))
    before = _shift(jnp.cumsum(tot, axis=-2), -2, forward=True)                    # [..., n, K]
    after = _shift(jnp.cumsum(tot[..., ::-1, :], axis=-2)[..., ::-1, :], -2, forward=False)
    q_factor = jnp.exp(lq + before[..., :, None, :]).reshape(*lead, chunk, dk)
    k_factor = jnp.exp(rk + after[..., :, None, :]).reshape(*lead, chunk, dk)
    return q_factor, k_factor, jnp.exp(jnp.sum(tot, axis=-2))


def linear_attention_chunked(q_BxHxLxK, k_BxHxLxK, v_BxHxLxV, *, log_decay_BxHxLxK=None,
                             bonus_HxK=None, chunk_size=64):
    """Reference: the chunked form (parallel within a chunk, recurrent across chunks), float32.

    q, k: [B, H, L, K]; v: [B, H, L, V]; log_decay: [B, H, L, K] (<= 0) or None;
    bonus: [H, K] or None.
    Any L: padded inside to a multiple of the chunk. Returns [B, H, L, V] in q.dtype.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    f32 = jnp.float32
    batch, heads, seq_len, dk = q_BxHxLxK.shape
    dv = v_BxHxLxV.shape[-1]
    sub = _sub_chunk_size(chunk_size)
    chunk = min(chunk_size, -(-seq_len // sub) * sub)
    n_chunks = -(-seq_len // chunk)
    pad = n_chunks * chunk - seq_len

    def chunked(a):  # [B, H, L, X] -> [B, H, N, C, X] float32, zero-padded at the end
        a = jnp.pad(a.astype(f32), ((0, 0), (0, 0), (0, pad), (0, 0)))
        return a.reshape(batch, heads, n_chunks, chunk, a.shape[-1])

    q, k, v = chunked(q_BxHxLxK), chunked(k_BxHxLxK), chunked(v_BxHxLxV)
    g = None if log_decay_BxHxLxK is None else chunked(log_decay_BxHxLxK)
    inclusive = bonus_HxK is None

    # Chunks of every batch row and head are independent here: one leading axis M = B*H*N keeps
    # the pairwise decay tensor [M, n, c, c, K] at rank 5 (6 under a vmap over runs); XLA:CPU
    # fusions of rank >= 7 arrays crash in jaxlib 0.10.2 (see mad_jax/xla_cpu_flags.py).
    def flat(a):  # [B, H, N, C, X] -> [M, C, X]
        return a.reshape(-1, chunk, a.shape[-1])

    scores_MxCxC = _intra_chunk_scores(flat(q), flat(k), None if g is None else flat(g),
                                       inclusive)
    o = jnp.einsum("mts,msv->mtv", scores_MxCxC, flat(v)).reshape(q.shape[:-1] + (dv,))
    if bonus_HxK is not None:
        u = bonus_HxK.astype(f32)[None, :, None, None, :]
        o = o + jnp.sum(q * u * k, axis=-1, keepdims=True) * v

    # Inter-chunk: carry the [K, V] state over chunks; all decay factors are exp(<= 0).
    if g is None:
        k_end, q_start, chunk_decay = k, q, None
    else:
        q_factor, k_factor, chunk_decay = _inter_chunk_factors(flat(g), inclusive)
        q_start, k_end = q * q_factor.reshape(q.shape), k * k_factor.reshape(k.shape)
        chunk_decay = chunk_decay.reshape(batch, heads, n_chunks, dk)
    updates = jnp.einsum("...sk,...sv->...kv", k_end, v)                       # [B, H, N, K, V]

    def carry(s_BxHxKxV, inputs):
        update, decay = inputs
        s_next = s_BxHxKxV + update if decay is None else decay[..., None] * s_BxHxKxV + update
        return s_next, s_BxHxKxV

    xs = (jnp.moveaxis(updates, 2, 0),
          None if chunk_decay is None else jnp.moveaxis(chunk_decay, 2, 0))
    s0 = jnp.zeros((batch, heads, dk, dv), f32)
    _, s_before = jax.lax.scan(carry, s0, xs)
    o = o + jnp.einsum("bhnck,nbhkv->bhncv", q_start, s_before)
    o = o.reshape(batch, heads, n_chunks * chunk, dv)[:, :, :seq_len]
    return o.astype(q_BxHxLxK.dtype)


def linear_attention(q_BxHxLxK, k_BxHxLxK, v_BxHxLxV, *, log_decay_BxHxLxK=None, bonus_HxK=None,
                     chunk_size=64, impl="auto"):
    """Linear attention / GLA / RWKV 5-6 state recurrence (see the module docstring), any L.

    q, k: [B, H, L, K]; v: [B, H, L, V]; log_decay: [B, H, L, K] (<= 0; None for no decay);
    bonus: [H, K] or None. Returns [B, H, L, V] in q.dtype, float32 inside. `impl` picks the
    Pallas kernel (`pallas_kernels.linear_attention`, GPU only, no bonus) or the chunked
    reference (see `mad_jax.ops.dispatch`); "auto" keeps the reference on every backend until a
    native run confirms the kernel, and falls back to it wherever the kernel cannot run (bonus,
    TPU, CPU). `chunk_size` is the jnp form's chunk; the kernel uses its own tiling.
    """
    choice, forced = dispatch.resolve_impl(impl, "linear_attention")
    if choice == "pallas":
        import pallas_kernels

        f32 = jnp.float32
        try:
            # float32 operands: the kernel accumulates in float32 whatever the input dtype.
            o_BxHxLxV = pallas_kernels.linear_attention(
                q_BxHxLxK.astype(f32), k_BxHxLxK.astype(f32), v_BxHxLxV.astype(f32),
                None if log_decay_BxHxLxK is None else log_decay_BxHxLxK.astype(f32),
                bonus_HxK)
            return o_BxHxLxV.astype(q_BxHxLxK.dtype)
        except pallas_kernels.UnsupportedShapeError:
            if forced:
                raise
    return linear_attention_chunked(q_BxHxLxK, k_BxHxLxK, v_BxHxLxV,
                                    log_decay_BxHxLxK=log_decay_BxHxLxK, bonus_HxK=bonus_HxK,
                                    chunk_size=chunk_size)
