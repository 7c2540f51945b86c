"""Forward linear-attention kernel: chunks in sequence per (batch*head, value block).

Per chunk of C steps starting from the state S [K, V] (G the log decay summed from the chunk
start, inclusive):
    O = A V + (Q * exp(G)) S,                 A[t, s] = sum_k q_tk k_sk exp(G_tk - G_sk), s <= t
    S' = diag(exp(G_end)) S + (K * exp(G_end - G))^T V
Every exponent is a sum of log decays over a span (s, t] with s <= t, accumulated step by step as
a sum of same-sign terms (`chunk_decays`), never a difference of two cumulative sums: so every
factor lies in [0, 1] and keeps float32 precision however strong the decay. The scores are built
one query row at a time (a [C, K] exponential per row); the products with V and S are matmuls.
Optionally the state at the start of every chunk is written out for the backward pass.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.linear_attention.config import LinearAttentionConfig

f32 = jnp.float32
_NN = (((1,), (0,)), ((), ()))   # a @ b
_NT = (((1,), (1,)), ((), ()))   # a @ b^T
_TN = (((0,), (0,)), ((), ()))   # a^T @ b


def dot(a, b, dims, precision):
    return lax.dot_general(a, b, dims, precision=precision, preferred_element_type=f32)


def causal_mask(chunk):
    pos_t = lax.broadcasted_iota(jnp.int32, (chunk, chunk), 0)
    pos_s = lax.broadcasted_iota(jnp.int32, (chunk, chunk), 1)
    return pos_t >= pos_s


def chunk_decays(q_ref, k_CxK, g_ref, t0, chunk, da_CxC=None):
    """Decay-weighted scores of one chunk and the factors that connect it to the carried state.

    q_ref, g_ref: [Lp, K] refs (rows t0 .. t0+C-1 are the chunk); k_CxK the chunk's keys (f32).
    Returns (A [C, C], exp(G) [C, K] (query side), exp(G_end - G) [C, K] (key side),
    exp(G_end) [K]); with `da_CxC` = dL/dA (causal) also the intra-chunk parts of dq and dk.
    Row i keeps span[s] = sum of g over (s, i] for s < i (0 at s = i), updated by adding g_i:
    a running same-sign sum, like the recurrence itself.
    """
    dk = k_CxK.shape[1]
    row_CxK = lax.broadcasted_iota(jnp.int32, (chunk, dk), 0)
    row_CxC = lax.broadcasted_iota(jnp.int32, (chunk, chunk), 0)
    zeros_CxK, zeros_CxC = jnp.zeros((chunk, dk), f32), jnp.zeros((chunk, chunk), f32)

    def row(i, carry):
        span_CxK, prefix_K, a_CxC, q_fac_CxK, dq_CxK, dk_CxK = carry
        g_K = g_ref[t0 + i, :].astype(f32)
        q_K = q_ref[t0 + i, :].astype(f32)
        span_CxK = jnp.where(row_CxK < i, span_CxK + g_K[None, :], 0.0)
        prefix_K = prefix_K + g_K
        e_CxK = jnp.where(row_CxK <= i, jnp.exp(span_CxK), 0.0)     # exp(G_i - G_s), s <= i
        ke_CxK = k_CxK * e_CxK
        a_C = jnp.sum(ke_CxK * q_K[None, :], axis=1)
        a_CxC = jnp.where(row_CxC == i, a_C[None, :], a_CxC)
        q_fac_CxK = jnp.where(row_CxK == i, jnp.exp(prefix_K)[None, :], q_fac_CxK)
        if da_CxC is not None:
            da_C = jnp.sum(jnp.where(row_CxC == i, da_CxC, 0.0), axis=0)
            dq_CxK = jnp.where(row_CxK == i, jnp.sum(da_C[:, None] * ke_CxK, axis=0)[None, :],
                               dq_CxK)
            dk_CxK = dk_CxK + da_C[:, None] * q_K[None, :] * e_CxK
        return span_CxK, prefix_K, a_CxC, q_fac_CxK, dq_CxK, dk_CxK

    init = (zeros_CxK, jnp.zeros((dk,), f32), zeros_CxC, zeros_CxK, zeros_CxK, zeros_CxK)
    span_CxK, prefix_K, a_CxC, q_fac_CxK, dq_CxK, dk_CxK = lax.fori_loop(0, chunk, row, init)
    # After the last row, span[s] = sum of g over (s, C-1]: the key side's factor to the chunk end.
    factors = (a_CxC, q_fac_CxK, jnp.exp(span_CxK), jnp.exp(prefix_K))
    return factors + ((dq_CxK, dk_CxK) if da_CxC is not None else ())


def _forward_kernel(q_ref, k_ref, *refs, chunk, n_chunks, has_decay, save_states, precision):
    # q_ref, k_ref (, g_ref): [Lp, Kp]; v_ref, o_ref: [Lp, bv]; ckpt_ref: [nC, Kp, bv].
    refs = list(refs)
    g_ref = refs.pop(0) if has_decay else None
    v_ref, o_ref = refs[0], refs[1]
    ckpt_ref = refs[2] if save_states else None
    causal_CxC = causal_mask(chunk)

    def chunk_body(c, s_KxV):
        if save_states:
            ckpt_ref[c] = s_KxV
        t0 = pl.multiple_of(c * chunk, chunk)
        rows = pl.ds(t0, chunk)
        q_CxK, k_CxK = q_ref[rows, :].astype(f32), k_ref[rows, :].astype(f32)
        v_CxV = v_ref[rows, :].astype(f32)
        if has_decay:
            a_CxC, q_fac_CxK, k_fac_CxK, decay_K = chunk_decays(q_ref, k_CxK, g_ref, t0, chunk)
            q_start_CxK, k_end_CxK = q_CxK * q_fac_CxK, k_CxK * k_fac_CxK
        else:
            a_CxC = jnp.where(causal_CxC, dot(q_CxK, k_CxK, _NT, precision), 0.0)
            q_start_CxK, k_end_CxK = q_CxK, k_CxK
        o_CxV = dot(a_CxC, v_CxV, _NN, precision) + dot(q_start_CxK, s_KxV, _NN, precision)
        o_ref[rows, :] = o_CxV.astype(o_ref.dtype)
        if has_decay:
            s_KxV = decay_K[:, None] * s_KxV
        return s_KxV + dot(k_end_CxK, v_CxV, _TN, precision)

    dk, bv = q_ref.shape[1], v_ref.shape[1]
    lax.fori_loop(0, n_chunks, chunk_body, jnp.zeros((dk, bv), f32))


def forward_gpu(q, k, g, v, *, config: LinearAttentionConfig, block_v, precision, save_states):
    """Padded operands: q, k, g [BH, Lp, Kp] (g None: no decay); v [BH, Lp, Vp].

    Returns o [BH, Lp, Vp] (q.dtype) and, if `save_states`, the chunk-start states
    [BH, Lp/C, Kp, Vp] float32.
    """
    bh, seq_len, dk = q.shape
    dv = v.shape[2]
    chunk = config.chunk
    n_chunks = seq_len // chunk
    key_spec = pl.BlockSpec((None, seq_len, dk), lambda i, j: (i, 0, 0))
    val_spec = pl.BlockSpec((None, seq_len, block_v), lambda i, j: (i, 0, j))
    operands = [q, k] + ([g] if g is not None else []) + [v]
    out_shape = [jax.ShapeDtypeStruct((bh, seq_len, dv), q.dtype)]
    out_specs = [val_spec]
    if save_states:
        out_shape.append(jax.ShapeDtypeStruct((bh, n_chunks, dk, dv), f32))
        out_specs.append(pl.BlockSpec((None, n_chunks, dk, block_v), lambda i, j: (i, 0, 0, j)))
    kernel = functools.partial(_forward_kernel, chunk=chunk, n_chunks=n_chunks,
                               has_decay=g is not None, save_states=save_states,
                               precision=precision)
    outs = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(bh, dv // block_v),
        in_specs=[key_spec] * (len(operands) - 1) + [val_spec],
        out_specs=out_specs,
        compiler_params=pltriton.CompilerParams(num_warps=config.num_warps,
                                                num_stages=config.num_stages),
        interpret=config.interpret,
        name="linear_attention_fwd",
    )(*operands)
    return (outs[0], outs[1]) if save_states else (outs[0], None)
