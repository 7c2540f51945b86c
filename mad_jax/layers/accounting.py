"""FLOP-counting conventions shared by every layer's `flops` method.

Conventions (forward pass, one sequence, batch 1):
  * a multiply-add is 2 FLOPs; a dense map [L, m] @ [m, n] costs 2 * L * m * n;
  * softmax attention counts the full L x L score and value products as computed
    (2 * L * L * d each), without halving for the causal mask;
  * an FFT-based causal convolution of length L over C channels counts three real FFTs of
    length 2L (2.5 * n * log2(n) FLOPs each) plus the pointwise complex product (6 per bin);
  * elementwise activations, norms and gates are counted at 1 FLOP per element where they
    are a visible part of the layer's math, and ignored otherwise (they are small).
"""
from __future__ import annotations

import math


def dense_flops(seq_len: int, d_in: int, d_out: int) -> int:
    """FLOPs of applying a [d_in, d_out] matrix at each of `seq_len` positions."""
    return 2 * seq_len * d_in * d_out


def fft_conv_flops(seq_len: int, channels: int) -> int:
    """FLOPs of a causal convolution of length `seq_len` over `channels` channels through FFT,
    counted at FFT length 2L (the reference's; `ops.fft_size` may run a few points longer)."""
    n = 2 * seq_len
    per_fft = 2.5 * n * math.log2(n)
    pointwise = 6 * (n // 2 + 1)
    return int(channels * (3 * per_fft + pointwise))


def attention_flops(seq_len: int, qk_dim: int, v_dim: int) -> int:
    """FLOPs of softmax attention scores and value mixing over the full L x L matrix."""
    return 2 * seq_len * seq_len * qk_dim + 2 * seq_len * seq_len * v_dim
