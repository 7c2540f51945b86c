"""The delta rule (DeltaNet, Gated DeltaNet) and the generalised delta rule (RWKV-7).

Delta rule, per batch and head (state S [K, V], S_0 = 0, g = log gate <= 0, or 0 when None):
    S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,     o_t = q_t^T S_t
(Schlag et al. 2021; chunked training form of Yang et al. 2024, arXiv 2406.06484; the scalar gate
of Gated DeltaNet, Yang et al. 2024, arXiv 2412.06464). Keys are normalised by the caller.

Chunked form. Writing the update as S_t = a_t S_{t-1} + k_t u_t^T with a_t = exp(g_t) and the
"new value" u_t = beta_t (v_t - a_t S_{t-1}^T k_t), a chunk that starts from state S_0 has
    S_t = gamma_t S_0 + sum_{i<=t} (gamma_t / gamma_i) k_i u_i^T,    gamma_t = prod_{j<=t} a_j,
and the u_t solve a unit lower-triangular system (the UT transform):
    (I + M) U = diag(beta) V - diag(beta gamma) K S_0,   M[t, i] = beta_t (gamma_t/gamma_i) k_t.k_i
for i < t. With W = (I + M)^{-1} diag(beta gamma) K and U0 = (I + M)^{-1} diag(beta) V (the WY
factors, computed in parallel for every chunk), the chunk recurrence is only
    U = U0 - W S_0,   O = diag(gamma) Q S_0 + (causal * gamma_t/gamma_i * Q K^T) U,
    S_C = gamma_C S_0 + (diag(gamma_C / gamma) K)^T U.
Numerical safety: no factor exp(G_t) is ever multiplied by exp(-G_s). Every ratio gamma_t/gamma_i
(t >= i) is exp of a segment sum sum_{i<j<=t} g_j, formed as a masked cumulative sum of same-sign
terms (no difference of long cumulative sums, which would lose float32 precision to
cancellation), so every exponent is <= 0 and every factor lies in [0, 1], for gates down to -20
and beyond.

Generalised delta rule (diagonal plus rank one), per batch and head (state S [K, V], S_0 = 0):
    S_t = (diag(exp(g_t)) + a_t b_t^T) S_{t-1} + k_t v_t^T,     o_t = q_t^T S_t
with a vector log decay g_t [K] (<= 0). RWKV-7 is a_t = -(in-context rate * kappa_hat_t),
b_t = kappa_hat_t (the paper's S_{t-1} (diag(w_t) - kappa_hat^T (a * kappa_hat)) + v^T k, in the
[K, V] layout used here). `generalized_delta_rule` runs it as a lax.scan over time: a chunked
form with per-channel decays is not implemented.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mad_jax.ops import dispatch

_F32 = jnp.float32


def delta_rule_recurrent(q_BxHxLxK, k_BxHxLxK, v_BxHxLxV, beta_BxHxL, *, log_gate_BxHxL=None):
    """Oracle: the delta-rule recurrence as a lax.scan over time, in float32; returns q.dtype."""
    batch, heads, seq_len, dk = q_BxHxLxK.shape
    dv = v_BxHxLxV.shape[-1]
    if log_gate_BxHxL is None:
        log_gate_BxHxL = jnp.zeros((batch, heads, seq_len), _F32)
    seqs = [jnp.moveaxis(a.astype(_F32), 2, 0)
            for a in (q_BxHxLxK, k_BxHxLxK, v_BxHxLxV, beta_BxHxL, log_gate_BxHxL)]

    def step(s_BxHxKxV, inputs):
        q_BxHxK, k_BxHxK, v_BxHxV, beta_BxH, g_BxH = inputs
        s_BxHxKxV = jnp.exp(g_BxH)[..., None, None] * s_BxHxKxV
        read_BxHxV = jnp.einsum("bhk,bhkv->bhv", k_BxHxK, s_BxHxKxV)
        u_BxHxV = beta_BxH[..., None] * (v_BxHxV - read_BxHxV)
        s_BxHxKxV = s_BxHxKxV + k_BxHxK[..., :, None] * u_BxHxV[..., None, :]
        return s_BxHxKxV, jnp.einsum("bhk,bhkv->bhv", q_BxHxK, s_BxHxKxV)

    s0 = jnp.zeros((batch, heads, dk, dv), _F32)
    _, o_LxBxHxV = jax.lax.scan(step, s0, seqs)
    return jnp.moveaxis(o_LxBxHxV, 0, 2).astype(q_BxHxLxK.dtype)


def _segment_sums(g_MxC):
    """seg[m, t, i] = sum_{i<j<=t} g[m, j] for t >= i (0 on and above the diagonal's upper side),
    as a cumulative sum of masked same-sign terms (exact up to rounding, no cancellation)."""
    chunk = g_MxC.shape[-1]
    pos = jnp.arange(chunk)
    below_CxC = pos[:, None] > pos[None, :]
    terms_MxCxC = jnp.where(below_CxC, g_MxC[..., :, None], 0.0)
    return jnp.cumsum(terms_MxCxC, axis=-2)


def delta_rule_chunked(q_BxHxLxK, k_BxHxLxK, v_BxHxLxV, beta_BxHxL, *, log_gate_BxHxL=None,
                       chunk_size=64):
    """Reference: the chunked WY / UT-transform form (see the module docstring), float32.

    q, k: [B, H, L, K]; v: [B, H, L, V]; beta: [B, H, L]; log_gate: [B, H, L] (<= 0) or None.
    Any L: padded inside to a multiple of the chunk (padded steps have beta = 0 and g = 0, so
    they leave the state unchanged). Returns [B, H, L, V] in q.dtype.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    batch, heads, seq_len, dk = q_BxHxLxK.shape
    dv = v_BxHxLxV.shape[-1]
    chunk = min(chunk_size, seq_len)
    n_chunks = -(-seq_len // chunk)
    pad = n_chunks * chunk - seq_len
    if log_gate_BxHxL is None:
        log_gate_BxHxL = jnp.zeros((batch, heads, seq_len), _F32)

    # Chunks of every batch row and head are independent in the parallel part: one leading axis
    # M = B*H*N keeps every intermediate at rank <= 4.
    def chunked(a):  # [B, H, L(, X)] -> [M, C(, X)] float32, zero-padded at the end
        a = a.astype(_F32)
        a = jnp.pad(a, ((0, 0), (0, 0), (0, pad)) + ((0, 0),) * (a.ndim - 3))
        return a.reshape((batch * heads * n_chunks, chunk) + a.shape[3:])

    q, k, v = chunked(q_BxHxLxK), chunked(k_BxHxLxK), chunked(v_BxHxLxV)
    beta, g = chunked(beta_BxHxL), chunked(log_gate_BxHxL)

    pos = jnp.arange(chunk)
    causal_CxC = pos[:, None] >= pos[None, :]
    seg_MxCxC = _segment_sums(g)
    ratio_MxCxC = jnp.where(causal_CxC, jnp.exp(seg_MxCxC), 0.0)       # gamma_t / gamma_i, t >= i
    gamma_MxC = jnp.exp(jnp.cumsum(g, axis=-1))                          # gamma_t
    to_end_MxC = ratio_MxCxC[:, -1, :]                                   # gamma_C / gamma_i
    gamma_end_M = gamma_MxC[:, -1]

    # UT transform: (I + M) [W | U0] = [diag(beta gamma) K | diag(beta) V].
    strict_CxC = pos[:, None] > pos[None, :]
    kk_MxCxC = jnp.einsum("mtk,mik->mti", k, k)
    m_MxCxC = jnp.where(strict_CxC, beta[..., :, None] * ratio_MxCxC * kk_MxCxC, 0.0)
    rhs_MxCx_ = jnp.concatenate([(beta * gamma_MxC)[..., None] * k, beta[..., None] * v], axis=-1)
    lhs_MxCxC = m_MxCxC + jnp.eye(chunk, dtype=_F32)
    wu_MxCx_ = jax.scipy.linalg.solve_triangular(lhs_MxCxC, rhs_MxCx_, lower=True,
                                                 unit_diagonal=True)
    w_MxCxK, u0_MxCxV = wu_MxCx_[..., :dk], wu_MxCx_[..., dk:]

    scores_MxCxC = ratio_MxCxC * jnp.einsum("mtk,mik->mti", q, k)       # causal by ratio
    q_start_MxCxK = gamma_MxC[..., None] * q
    k_end_MxCxK = to_end_MxC[..., None] * k

    def per_chunk_first(a):  # [M, ...] -> [N, B*H, ...] for the scan over chunks
        a = a.reshape((batch * heads, n_chunks) + a.shape[1:])
        return jnp.moveaxis(a, 1, 0)

    def carry(s_PxKxV, inputs):
        w, u0, scores, q_start, k_end, gamma_end = inputs
        u_PxCxV = u0 - jnp.einsum("pck,pkv->pcv", w, s_PxKxV)
        o_PxCxV = (jnp.einsum("pck,pkv->pcv", q_start, s_PxKxV)
                   + jnp.einsum("pts,psv->ptv", scores, u_PxCxV))
        s_next = gamma_end[:, None, None] * s_PxKxV + jnp.einsum("pck,pcv->pkv", k_end, u_PxCxV)
        return s_next, o_PxCxV

    xs = tuple(map(per_chunk_first, (w_MxCxK, u0_MxCxV, scores_MxCxC, q_start_MxCxK,
                                     k_end_MxCxK, gamma_end_M)))
    s0 = jnp.zeros((batch * heads, dk, dv), _F32)
    _, o_NxPxCxV = jax.lax.scan(carry, s0, xs)
    o = jnp.moveaxis(o_NxPxCxV, 0, 1).reshape(batch, heads, n_chunks * chunk, dv)[:, :, :seq_len]
    return o.astype(q_BxHxLxK.dtype)


def delta_rule(q_BxHxLxK, k_BxHxLxK, v_BxHxLxV, beta_BxHxL, *, log_gate_BxHxL=None,
               chunk_size=64, impl="auto"):
    """The (gated) delta rule of the module docstring, any L.

    q, k: [B, H, L, K] (k normalised by the caller); v: [B, H, L, V]; beta: [B, H, L];
    log_gate: [B, H, L] (<= 0; None for no gate). Returns [B, H, L, V] in q.dtype, float32 inside.
    `impl` picks the Pallas kernel (`pallas_kernels.delta_rule`: GPU, or interpret mode; its
    backward recomputes through a jnp chunked form) or this chunked reference; "auto" keeps the
    reference on every backend until a native run confirms the kernel (dispatch.py).
    """
    choice, forced = dispatch.resolve_impl(impl, "delta_rule")
    if choice == "pallas":
        import pallas_kernels

        try:
            o_BxHxLxV = pallas_kernels.delta_rule(
                q_BxHxLxK.astype(_F32), k_BxHxLxK.astype(_F32), v_BxHxLxV.astype(_F32),
                beta_BxHxL.astype(_F32),
                None if log_gate_BxHxL is None else log_gate_BxHxL.astype(_F32))
            return o_BxHxLxV.astype(q_BxHxLxK.dtype)
        except pallas_kernels.UnsupportedShapeError:
            if forced:
                raise
    return delta_rule_chunked(q_BxHxLxK, k_BxHxLxK, v_BxHxLxV, beta_BxHxL,
                              log_gate_BxHxL=log_gate_BxHxL, chunk_size=chunk_size)


def generalized_delta_rule_recurrent(q_BxHxLxK, k_BxHxLxK, v_BxHxLxV, a_BxHxLxK, b_BxHxLxK, *,
                                     log_decay_BxHxLxK=None):
    """The generalised delta rule of the module docstring as a lax.scan over time, float32.

    q, k, a, b: [B, H, L, K]; v: [B, H, L, V]; log_decay: [B, H, L, K] (<= 0) or None.
    Returns [B, H, L, V] in q.dtype.
    """
    batch, heads, _, dk = q_BxHxLxK.shape
    dv = v_BxHxLxV.shape[-1]
    if log_decay_BxHxLxK is None:
        log_decay_BxHxLxK = jnp.zeros(q_BxHxLxK.shape, _F32)
    seqs = [jnp.moveaxis(x.astype(_F32), 2, 0) for x in
            (q_BxHxLxK, k_BxHxLxK, v_BxHxLxV, a_BxHxLxK, b_BxHxLxK, log_decay_BxHxLxK)]

    def step(s_BxHxKxV, inputs):
        q_BxHxK, k_BxHxK, v_BxHxV, a_BxHxK, b_BxHxK, g_BxHxK = inputs
        read_BxHxV = jnp.einsum("bhk,bhkv->bhv", b_BxHxK, s_BxHxKxV)
        s_BxHxKxV = (jnp.exp(g_BxHxK)[..., None] * s_BxHxKxV
                     + a_BxHxK[..., :, None] * read_BxHxV[..., None, :]
                     + k_BxHxK[..., :, None] * v_BxHxV[..., None, :])
        return s_BxHxKxV, jnp.einsum("bhk,bhkv->bhv", q_BxHxK, s_BxHxKxV)

    s0 = jnp.zeros((batch, heads, dk, dv), _F32)
    _, o_LxBxHxV = jax.lax.scan(step, s0, seqs)
    return jnp.moveaxis(o_LxBxHxV, 0, 2).astype(q_BxHxLxK.dtype)


def generalized_delta_rule(q_BxHxLxK, k_BxHxLxK, v_BxHxLxV, a_BxHxLxK, b_BxHxLxK, *,
                           log_decay_BxHxLxK=None):
    """The generalised (diagonal plus rank-one) delta rule of the module docstring, any L.

    q, k, a, b: [B, H, L, K]; v: [B, H, L, V]; log_decay: [B, H, L, K] (<= 0; None for none).
    Returns [B, H, L, V] in q.dtype, float32 inside. Runs the lax.scan recurrence on every backend:
    there is no chunked form or kernel for it yet, so it takes no `impl`.
    """
    return generalized_delta_rule_recurrent(q_BxHxLxK, k_BxHxLxK, v_BxHxLxV, a_BxHxLxK,
                                            b_BxHxLxK, log_decay_BxHxLxK=log_decay_BxHxLxK)
