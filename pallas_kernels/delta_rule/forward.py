"""Forward delta-rule kernel: chunks in sequence per (batch*head, value block).

Per chunk of C steps from state S [K, V], with gamma_t = exp(sum_{r<=t} g_r) (from the chunk
start) and E[t, i] = gamma_t / gamma_i = exp(sum_{i<r<=t} g_r) for i <= t (0 above):
    M = strictly_lower(beta_t (k_t . k_i) E[t, i]),    T = (I + M)^{-1}   (forward substitution)
    W = T diag(beta gamma) K,   U = T diag(beta) V - W S            (the WY / UT transform)
    O = diag(gamma) Q S + (causal(Q K^T) * E) U
    S' = gamma_end S + (diag(E[C-1, :]) K)^T U
(Yang et al. 2024, arXiv 2406.06484, with the scalar gate of Gated DeltaNet.) Every exponent is a
span sum of gates accumulated step by step from same-sign terms (`gate_spans`), never a
difference of two cumulative sums, so every factor lies in [0, 1] however strong the gate.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.delta_rule.config import DeltaRuleConfig

f32 = jnp.float32
_NN = (((1,), (0,)), ((), ()))   # a @ b
_NT = (((1,), (1,)), ((), ()))   # a @ b^T
_TN = (((0,), (0,)), ((), ()))   # a^T @ b


def _dot(a, b, dims, precision):
    return lax.dot_general(a, b, dims, precision=precision, preferred_element_type=f32)


def gate_spans(g_C, chunk):
    """span [C, C] with span[t, i] = sum_{i<r<=t} g_r (0 for i >= t) and prefix [C] with
    prefix[t] = sum_{r<=t} g_r, each accumulated one gate at a time (same-sign sums)."""
    pos_C = lax.broadcasted_iota(jnp.int32, (chunk,), 0)
    row_CxC = lax.broadcasted_iota(jnp.int32, (chunk, chunk), 0)
    col_CxC = lax.broadcasted_iota(jnp.int32, (chunk, chunk), 1)

    def add_gate(r, carry):
        span_CxC, prefix_C = carry
        g_r = jnp.sum(jnp.where(pos_C == r, g_C, 0.0))
        span_CxC = span_CxC + jnp.where((col_CxC < r) & (row_CxC >= r), g_r, 0.0)
        return span_CxC, prefix_C + jnp.where(pos_C >= r, g_r, 0.0)

    init = (jnp.zeros((chunk, chunk), f32), jnp.zeros((chunk,), f32))
    return lax.fori_loop(0, chunk, add_gate, init)


def unit_lower_inverse(m_CxC, chunk):
    """(I + M)^{-1} for strictly lower-triangular M, row by row:
    T_t = e_t - sum_{i<t} M[t, i] T_i (rows i < t are final when row t is formed)."""
    row_CxC = lax.broadcasted_iota(jnp.int32, (chunk, chunk), 0)
    col_CxC = lax.broadcasted_iota(jnp.int32, (chunk, chunk), 1)
    pos_C = lax.broadcasted_iota(jnp.int32, (chunk,), 0)

    def solve_row(t, t_CxC):
        m_C = jnp.sum(jnp.where(row_CxC == t, m_CxC, 0.0), axis=0)
        t_row_C = jnp.where(pos_C == t, 1.0, 0.0) - jnp.sum(m_C[:, None] * t_CxC, axis=0)
        return jnp.where(row_CxC == t, t_row_C[None, :], t_CxC)

    eye_CxC = jnp.where(row_CxC == col_CxC, 1.0, 0.0).astype(f32)
    return lax.fori_loop(1, chunk, solve_row, eye_CxC)


def _forward_kernel(q_ref, k_ref, beta_ref, *refs, chunk, n_chunks, has_gate, precision):
    # q_ref, k_ref: [Lp, Kp]; beta_ref (, g_ref): [Lp]; v_ref, o_ref: [Lp, bv].
    refs = list(refs)
    g_ref = refs.pop(0) if has_gate else None
    v_ref, o_ref = refs
    row_CxC = lax.broadcasted_iota(jnp.int32, (chunk, chunk), 0)
    col_CxC = lax.broadcasted_iota(jnp.int32, (chunk, chunk), 1)
    pos_C = lax.broadcasted_iota(jnp.int32, (chunk,), 0)

    def chunk_body(c, s_KxV):
        t0 = pl.multiple_of(c * chunk, chunk)
        rows = pl.ds(t0, chunk)
        q_CxK, k_CxK = q_ref[rows, :].astype(f32), k_ref[rows, :].astype(f32)
        v_CxV = v_ref[rows, :].astype(f32)
        beta_C = beta_ref[rows].astype(f32)
        if has_gate:
            span_CxC, prefix_C = gate_spans(g_ref[rows].astype(f32), chunk)
            ratio_CxC = jnp.where(row_CxC >= col_CxC, jnp.exp(span_CxC), 0.0)
            gamma_C = jnp.exp(prefix_C)
            to_end_C = jnp.sum(jnp.where(row_CxC == chunk - 1, ratio_CxC, 0.0), axis=0)
            gamma_end = jnp.sum(jnp.where(pos_C == chunk - 1, gamma_C, 0.0))
        else:
            ratio_CxC = jnp.where(row_CxC >= col_CxC, 1.0, 0.0).astype(f32)
        kk_CxC = _dot(k_CxK, k_CxK, _NT, precision)
        m_CxC = jnp.where(row_CxC > col_CxC, beta_C[:, None] * kk_CxC * ratio_CxC, 0.0)
        t_CxC = unit_lower_inverse(m_CxC, chunk)
        beta_gamma_C = beta_C * gamma_C if has_gate else beta_C
        w_CxK = _dot(t_CxC, beta_gamma_C[:, None] * k_CxK, _NN, precision)
        u_CxV = (_dot(t_CxC, beta_C[:, None] * v_CxV, _NN, precision)
                 - _dot(w_CxK, s_KxV, _NN, precision))
        scores_CxC = _dot(q_CxK, k_CxK, _NT, precision) * ratio_CxC
        q_read_CxV = _dot(q_CxK, s_KxV, _NN, precision)
        if has_gate:
            q_read_CxV = gamma_C[:, None] * q_read_CxV
        o_CxV = q_read_CxV + _dot(scores_CxC, u_CxV, _NN, precision)
        o_ref[rows, :] = o_CxV.astype(o_ref.dtype)
        if has_gate:
            return gamma_end * s_KxV + _dot(to_end_C[:, None] * k_CxK, u_CxV, _TN, precision)
        return s_KxV + _dot(k_CxK, u_CxV, _TN, precision)

    dk, bv = q_ref.shape[1], v_ref.shape[1]
    lax.fori_loop(0, n_chunks, chunk_body, jnp.zeros((dk, bv), f32))


def forward_gpu(q, k, beta, g, v, *, config: DeltaRuleConfig, block_v, precision):
    """Padded operands: q, k [BH, Lp, Kp]; beta, g [BH, Lp] (g None: no gate); v [BH, Lp, Vp].

    Returns o [BH, Lp, Vp] in q.dtype.
    """
    bh, seq_len, dk = q.shape
    dv = v.shape[2]
    chunk = config.chunk
    key_spec = pl.BlockSpec((None, seq_len, dk), lambda i, j: (i, 0, 0))
    step_spec = pl.BlockSpec((None, seq_len), lambda i, j: (i, 0))
    val_spec = pl.BlockSpec((None, seq_len, block_v), lambda i, j: (i, 0, j))
    operands = [q, k, beta] + ([g] if g is not None else []) + [v]
    kernel = functools.partial(_forward_kernel, chunk=chunk, n_chunks=seq_len // chunk,
                               has_gate=g is not None, precision=precision)
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((bh, seq_len, dv), q.dtype),
        grid=(bh, dv // block_v),
        in_specs=[key_spec, key_spec] + [step_spec] * (len(operands) - 3) + [val_spec],
        out_specs=val_spec,
        compiler_params=pltriton.CompilerParams(num_warps=config.num_warps,
                                                num_stages=config.num_stages),
        interpret=config.interpret,
        name="delta_rule_fwd",
    )(*operands)
