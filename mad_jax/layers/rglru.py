"""The recurrent block of Hawk / Griffin with its Real-Gated Linear Recurrent Unit (RG-LRU)
(De et al. 2024, "Griffin: Mixing Gated Linear Recurrences with Local Attention for Efficient
Language Models", arXiv 2402.19427), as a sequence mixer.

On the (already normalised) input x [B, L, D], with RNN width R = expand * D, H heads of width
R / H and a causal temporal convolution of width K:
  g   = GeLU(x W_g + b_g)                          gate branch            (W_g: D -> R)
  u   = conv_K(x W_u + b_u)                        recurrent branch       (W_u: D -> R, depthwise)
  r_t = sigmoid(u_t W_a + b_a)                     recurrence gate        (W_a: block-diagonal)
  i_t = sigmoid(u_t W_x + b_x)                     input gate             (W_x: block-diagonal)
  log a_t = -c softplus(-Lambda) r_t               i.e. a_t = a^(c r_t) with a = sigmoid(Lambda)
  h_t = a_t h_{t-1} + sqrt(1 - a_t^2) (i_t u_t),   h_0 = 0     (`mad_jax.ops.linear_recurrence`)
  y   = (h * g) W_o + b_o                                                 (W_o: R -> D)
The gates are block-diagonal over the H heads (each head's R/H channels gate only themselves),
as in the paper. Lambda [R] starts so that a^c is uniform in [decay_min, decay_max] = [0.9,
0.999] (the paper's initialisation): with r_t = 1 a channel keeps 90% to 99.9% of its state per
step, and r_t < 1 makes it keep more. c = 8.

Precision: the gate projections run in the compute dtype; the sigmoids, the decay, the sqrt and the
recurrence in float32. sqrt(1 - a_t^2) is taken of -expm1(2 log a_t) (no cancellation when a_t is
near 1), with its derivative bounded at 1000: d sqrt(x)/dx = 1 / (2 sqrt x) is unbounded as
a_t -> 1.

Initialisation: the three dense maps and the two gate maps are PyTorch-style Linear (weights
U(+-1/sqrt(fan_in)), fan_in R/H for the gate blocks; dense biases 0), the convolution like
PyTorch's depthwise Conv1d. The gate biases (0) and Lambda are the recurrence's own parameters,
not Linear ones: the autoencoder backbone's N(0, 0.02) re-draw of Linear weights leaves them alone.

Differences from the authors' code (google-deepmind/recurrentgemma), stated so they are not
mistaken for bugs: it skips the sqrt(1 - a_t^2) factor at the first token of a document (h_1 =
i_1 u_1); here every step follows the paper's equation. It draws a = sigmoid(Lambda) itself, not
a^c, in [0.9, 0.999] (by a ring's area measure), so that its a^c starts in [0.43, 0.992]; here a^c
is uniform in [0.9, 0.999] as the paper states. Its dense maps start from a normal fan-in init.

Defaults at D = 128 (registered as `rg-lru`): expand 3.5 (R = 448) and 16 heads (width 28).
  * R: the state to generate the next token is h (R numbers) plus the conv's last K - 1 inputs
    ((K - 1) R), 4 R in all. expand = 3.5 makes that 14 D, iso-state with `mamba` (2D x 4 SSM
    state + 3 x 2D conv tail = 14 D) at every width: 1,792 numbers at D = 128. (The paper's
    R = 4/3 D would hold 683; MAD relates scores to state size, so the default matches the
    recurrent layer it is most often compared with. The price is parameters: 201,728 against
    mamba's 107,264 at D = 128.)
  * heads: Griffin ties the number of gate blocks to the model's attention heads (10 or 16 blocks
    of 256 channels in recurrentgemma's 2B and 9B configs); `mh-attention` here runs 16 heads at
    D = 128, and 16 blocks of 28 keep the two gates at 2 R^2 / 16 = 25,088 weights (8 heads
    would double that).
  * K = 4 and c = 8 as in the paper.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mad_jax import ops
from mad_jax.layers.accounting import dense_flops
from mad_jax.layers.initializers import torch_dense, torch_linear_init
from mad_jax.layers.registry import register_layer
from mad_jax.layers.short_conv import ShortConv, short_conv_flops, short_conv_state

_F32 = jnp.float32
_MAX_SQRT_GRADIENT = 1000.0


def lambda_init(c: float, decay_min: float, decay_max: float) -> nn.initializers.Initializer:
    """Lambda = logit(a) with a^c ~ U[decay_min, decay_max], so that a^c = sigmoid(Lambda)^c
    covers the range uniformly (the paper's initialisation)."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = _F32) -> jax.Array:
        a_pow_c = jax.random.uniform(key, shape, _F32, decay_min, decay_max)
        log_a = jnp.log(a_pow_c) / c
        # logit(a) = log a - log(1 - a), with 1 - a = -expm1(log a) exact for a near 1.
        return (log_a - jnp.log(-jnp.expm1(log_a))).astype(dtype)

    return init


@jax.custom_jvp
def sqrt_bounded_gradient(x):
    """sqrt(x), with d/dx capped at _MAX_SQRT_GRADIENT (it grows as 1 / (2 sqrt x) near 0)."""
    return jnp.sqrt(x)


@sqrt_bounded_gradient.defjvp
def _sqrt_bounded_gradient_jvp(primals, tangents):
    (x,), (x_dot,) = primals, tangents
    floor = 1.0 / (4.0 * _MAX_SQRT_GRADIENT ** 2)  # where 1 / (2 sqrt x) reaches the cap
    return jnp.sqrt(x), x_dot * 0.5 * jax.lax.rsqrt(jnp.maximum(x, floor))


class BlockDiagonalDense(nn.Module):
    """y[..., h, :] = x[..., h, :] W[h] + b[h]: one [R/H, R/H] map per head, on x [..., R].

    W starts as PyTorch's Linear (fan_in R/H); b starts at 0 and is not a Linear bias to the
    backbone: as a gate bias it sets the gate's starting value.
    """

    num_heads: int
    dtype: Any = _F32
    param_dtype: Any = _F32

    @nn.compact
    def __call__(self, x_BxLxR: jnp.ndarray) -> jnp.ndarray:
        width = x_BxLxR.shape[-1]
        head_width = width // self.num_heads
        kernel_init = torch_linear_init(in_axis=1, out_axis=2, batch_axis=(0,))
        w_HxIxO = self.param("kernel", nn.with_logical_partitioning(kernel_init,
                                                                    ("heads", None, "kv")),
                             (self.num_heads, head_width, head_width), self.param_dtype)
        b_HxO = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros,
                                                                ("heads", "kv")),
                           (self.num_heads, head_width), self.param_dtype)
        x_BxLxHxI = x_BxLxR.astype(self.dtype).reshape(*x_BxLxR.shape[:-1], self.num_heads,
                                                       head_width)
        y_BxLxHxO = jnp.einsum("blhi,hio->blho", x_BxLxHxI, w_HxIxO.astype(self.dtype))
        y_BxLxHxO = y_BxLxHxO + b_HxO.astype(self.dtype)
        return y_BxLxHxO.reshape(x_BxLxR.shape)


class RGLRUBlock(nn.Module):
    """Hawk / Griffin's recurrent block with the RG-LRU (see the module docstring).

    Attributes:
      expand: RNN width R = expand * D (3.5: iso-state with `mamba`).
      num_heads: blocks H of the block-diagonal gates; must divide R.
      conv_width: width K of the causal depthwise temporal convolution.
      c: the constant in log a_t = -c softplus(-Lambda) r_t.
      decay_min, decay_max: a^c = sigmoid(Lambda)^c starts uniform in [decay_min, decay_max].
      use_bias: biases on the gate-branch, input and output maps (the authors' code has them).
    """

    expand: float = 3.5
    num_heads: int = 16
    conv_width: int = 4
    c: float = 8.0
    decay_min: float = 0.9
    decay_max: float = 0.999
    use_bias: bool = True
    dtype: Any = _F32
    param_dtype: Any = _F32

    def rnn_width(self, dim: int) -> int:
        """R = expand * D, checked to split into `num_heads` equal blocks."""
        width = int(self.expand * dim)
        if width < 1 or width % self.num_heads:
            raise ValueError(f"RNN width expand * D = {width} must be a positive multiple of "
                             f"num_heads={self.num_heads}; change expand or num_heads")
        return width

    @nn.compact
    def __call__(self, x_BxLxD: jnp.ndarray) -> jnp.ndarray:
        dim = x_BxLxD.shape[-1]
        width = self.rnn_width(dim)
        x_BxLxD = x_BxLxD.astype(self.dtype)

        gate_BxLxR = nn.gelu(torch_dense(self, width, ("embed", "mlp"), "gate_proj",
                                         self.use_bias)(x_BxLxD))
        u_BxLxR = torch_dense(self, width, ("embed", "mlp"), "in_proj", self.use_bias)(x_BxLxD)
        u_BxLxR = ShortConv(self.conv_width, use_bias=True, dtype=self.dtype,
                            param_dtype=self.param_dtype, name="conv1d")(u_BxLxR)

        kw = dict(num_heads=self.num_heads, dtype=self.dtype, param_dtype=self.param_dtype)
        r_BxLxR = jax.nn.sigmoid(BlockDiagonalDense(**kw, name="recurrence_gate")(u_BxLxR)
                                 .astype(_F32))
        i_BxLxR = jax.nn.sigmoid(BlockDiagonalDense(**kw, name="input_gate")(u_BxLxR)
                                 .astype(_F32))
        lambda_R = self.param(
            "Lambda", nn.with_logical_partitioning(
                lambda_init(self.c, self.decay_min, self.decay_max), ("mlp",)),
            (width,), self.param_dtype)
        log_a_BxLxR = -self.c * jax.nn.softplus(-lambda_R.astype(_F32)) * r_BxLxR
        a_BxLxR = jnp.exp(log_a_BxLxR)
        # sqrt(1 - a_t^2) from log a_t: 1 - exp(2 log a_t) = -expm1(2 log a_t), exact near a_t = 1.
        multiplier_BxLxR = sqrt_bounded_gradient(-jnp.expm1(2.0 * log_a_BxLxR))
        b_BxLxR = multiplier_BxLxR * (i_BxLxR * u_BxLxR.astype(_F32))
        h_BxLxR = ops.linear_recurrence(a_BxLxR, b_BxLxR)

        y_BxLxR = h_BxLxR.astype(self.dtype) * gate_BxLxR
        return torch_dense(self, dim, ("mlp", "embed"), "out_proj", self.use_bias)(y_BxLxR)

    def flops(self, dim: int, seq_len: int) -> int:
        """Forward FLOPs per sequence (R = expand D, H heads, K = conv_width):
        gate-branch and input maps 2 * 2 L D R, their biases 2 L R, GeLU L R; the conv 2 K L R;
        the two block-diagonal gates 2 * 2 L R^2 / H, their biases 2 L R, sigmoids 2 L R; per
        channel and step of the RG-LRU 9 L R: the decay (r times c softplus(-Lambda), its exp: 2),
        sqrt(1 - a^2) (square, subtract, sqrt: 3), i * u and the multiplier (2), the recurrence
        a h + b (2); the product with the gate branch L R; the output map 2 L R D and its bias
        L D. (c softplus(-Lambda) is once per channel, not per step: not counted.)"""
        width = self.rnn_width(dim)
        biases = (2 * seq_len * width + seq_len * dim) if self.use_bias else 0
        return int(2 * dense_flops(seq_len, dim, width) + seq_len * width
                   + short_conv_flops(self.conv_width, seq_len, width)
                   + 2 * dense_flops(seq_len, width, width // self.num_heads)
                   + 2 * seq_len * width + 2 * seq_len * width
                   + 9 * seq_len * width + seq_len * width
                   + dense_flops(seq_len, width, dim) + biases)

    def state_size(self, dim: int, seq_len: int) -> int:
        """Numbers kept per sequence to generate the next token, independent of L: h (R) and the
        conv's last K - 1 inputs ((K - 1) R). Default at D = 128: 448 + 3 * 448 = 1,792."""
        width = self.rnn_width(dim)
        return int(width + short_conv_state(self.conv_width, width))


register_layer("rg-lru", RGLRUBlock, {"expand": 3.5, "num_heads": 16, "conv_width": 4, "c": 8.0})
