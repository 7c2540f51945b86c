"""Backward linear-attention kernel: chunks visited last to first per (batch*head, value block).

With dS the gradient of the state leaving a chunk, S its saved incoming state, and the chunk's
factors from `chunk_decays` (A, q_fac = exp(G), k_fac = exp(G_end - G), decay = exp(G_end)):
    dA = causal(dO V^T)
    dV = A^T dO + (K * k_fac) dS
    dQ = [sum_s dA[t, s] k_s exp(G_t - G_s)] + (dO S^T) * q_fac
    dK = [sum_t dA[t, s] q_t exp(G_t - G_s)] + (V dS^T) * k_fac
    dS <- diag(decay) dS + (Q * q_fac)^T dO
dQ and dK come out as partial sums per value block, summed by the caller, which also forms the
log-decay gradient from them: dg_t = sum_{r >= t} (q_r dq_r - k_r dk_r) (shifting every G_t by
the same amount leaves the output unchanged, so only these products enter).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.linear_attention.config import LinearAttentionConfig
from pallas_kernels.linear_attention.forward import (_NN, _NT, _TN, causal_mask, chunk_decays,
                                                     dot)

f32 = jnp.float32


def _backward_kernel(q_ref, k_ref, *refs, chunk, n_chunks, has_decay, precision):
    # q_ref, k_ref (, g_ref): [Lp, Kp]; v_ref, do_ref, dv_ref: [Lp, bv]; ckpt_ref: [nC, Kp, bv];
    # dq_ref, dk_ref: [Lp, Kp] (this value block's partial sums).
    refs = list(refs)
    g_ref = refs.pop(0) if has_decay else None
    v_ref, do_ref, ckpt_ref, dq_ref, dk_ref, dv_ref = refs
    causal_CxC = causal_mask(chunk)

    def chunk_body(step, ds_KxV):
        c = n_chunks - 1 - step
        t0 = pl.multiple_of(c * chunk, chunk)
        rows = pl.ds(t0, chunk)
        q_CxK, k_CxK = q_ref[rows, :].astype(f32), k_ref[rows, :].astype(f32)
        v_CxV, do_CxV = v_ref[rows, :].astype(f32), do_ref[rows, :].astype(f32)
        s_KxV = ckpt_ref[c]
        da_CxC = jnp.where(causal_CxC, dot(do_CxV, v_CxV, _NT, precision), 0.0)
        if has_decay:
            a_CxC, q_fac_CxK, k_fac_CxK, decay_K, dq_CxK, dk_CxK = chunk_decays(
                q_ref, k_CxK, g_ref, t0, chunk, da_CxC)
            q_start_CxK, k_end_CxK = q_CxK * q_fac_CxK, k_CxK * k_fac_CxK
            dq_CxK = dq_CxK + dot(do_CxV, s_KxV, _NT, precision) * q_fac_CxK
            dk_CxK = dk_CxK + dot(v_CxV, ds_KxV, _NT, precision) * k_fac_CxK
        else:
            a_CxC = jnp.where(causal_CxC, dot(q_CxK, k_CxK, _NT, precision), 0.0)
            q_start_CxK, k_end_CxK = q_CxK, k_CxK
            dq_CxK = dot(da_CxC, k_CxK, _NN, precision) + dot(do_CxV, s_KxV, _NT, precision)
            dk_CxK = dot(da_CxC, q_CxK, _TN, precision) + dot(v_CxV, ds_KxV, _NT, precision)
        dv_CxV = dot(a_CxC, do_CxV, _TN, precision) + dot(k_end_CxK, ds_KxV, _NN, precision)
        dq_ref[rows, :] = dq_CxK
        dk_ref[rows, :] = dk_CxK
        dv_ref[rows, :] = dv_CxV.astype(dv_ref.dtype)
        if has_decay:
            ds_KxV = decay_K[:, None] * ds_KxV
        return ds_KxV + dot(q_start_CxK, do_CxV, _TN, precision)

    dk, bv = q_ref.shape[1], v_ref.shape[1]
    lax.fori_loop(0, n_chunks, chunk_body, jnp.zeros((dk, bv), f32))


def backward_gpu(q, k, g, v, do, states, *, config: LinearAttentionConfig, block_v, precision):
    """Padded operands as in `forward_gpu`, do [BH, Lp, Vp], states [BH, Lp/C, Kp, Vp].

    Returns dq, dk [BH, Vp/block_v, Lp, Kp] float32 (per value block) and dv [BH, Lp, Vp]
    (v.dtype).
    """
    bh, seq_len, dk = q.shape
    dv = v.shape[2]
    chunk = config.chunk
    n_chunks = seq_len // chunk
    n_blocks = dv // block_v
    key_spec = pl.BlockSpec((None, seq_len, dk), lambda i, j: (i, 0, 0))
    val_spec = pl.BlockSpec((None, seq_len, block_v), lambda i, j: (i, 0, j))
    partial_spec = pl.BlockSpec((None, None, seq_len, dk), lambda i, j: (i, j, 0, 0))
    keys = [q, k] + ([g] if g is not None else [])
    kernel = functools.partial(_backward_kernel, chunk=chunk, n_chunks=n_chunks,
                               has_decay=g is not None, precision=precision)
    return pl.pallas_call(
        kernel,
        out_shape=[
            jax.ShapeDtypeStruct((bh, n_blocks, seq_len, dk), f32),
            jax.ShapeDtypeStruct((bh, n_blocks, seq_len, dk), f32),
            jax.ShapeDtypeStruct(v.shape, v.dtype),
        ],
        grid=(bh, n_blocks),
        in_specs=[key_spec] * len(keys) + [
            val_spec, val_spec,
            pl.BlockSpec((None, n_chunks, dk, block_v), lambda i, j: (i, 0, 0, j))],
        out_specs=[partial_spec, partial_spec, val_spec],
        compiler_params=pltriton.CompilerParams(num_warps=config.num_warps_bwd,
                                                num_stages=config.num_stages),
        interpret=config.interpret,
        name="linear_attention_bwd",
    )(*keys, v, do, states)
