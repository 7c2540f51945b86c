"""Hyena experts (the MAD paper's `hyena-experts`), after athms/mad-lab `HyenaExpertsOperator`.

E narrow Hyena operators of width d (default 8 x 16) run side by side and a per-token router mixes
their outputs:
  1. projection u W_in + b_in to (N+1) E d channels (no tied groups), short causal filter (3) on
     all of them, split into gates x_0 .. x_{N-1} and value v of E d channels each;
  2. the Hyena recurrence (`hyena.hyena_recurrence`) with one implicit long filter and skip per
     channel, from one filter network with E d (N-1) output channels (filter FFN width 16);
  3. channel c belongs to expert c mod E (inner index c // E), as the reference's
     `y.reshape(..., dim_inner, num_experts)`; the router r = u W_r + b_r [E] weights the
     experts: by default (`routing="top-k"`) it keeps the top-k experts per token, weighted by
     the softmax of their k logits (renormalised top-k);
  4. the mixed d-wide output goes through one output projection d -> D shared by the experts.
Each expert therefore owns its projection columns, short filters, long filters and skips; the
filter network's hidden layers and the output projection are shared, as in the reference.

With top-k routing a Switch/GShard load-balancing loss is sown as ("losses", "aux_loss"):
  aux_loss_coef * E * sum_e f_e P_e, with f_e the fraction of (token, slot) routing assignments
that went to expert e and P_e the router's mean softmax probability for e; it equals the
coefficient under perfectly uniform routing and grows as routing collapses.

`routing="paper"` routes as the MAD paper's code computes it (`moe_paper.paper_routing_weights`):
the non-top-k *logits* are set to 0 and a softmax is taken over all E experts, so every expert
keeps a non-zero weight (exp(0) / Z), and no balancing loss is sown (the reference has none).
The default differs from the reference there, because non-top-k experts with weight exactly 0
and top-k weights summing to 1 is what top-k routing means. Every other part, parameters
included, is the reference's. All experts are evaluated for every token either way (they are
small and their FFT convolutions are batched), so FLOPs count all E experts.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mad_jax.layers.accounting import dense_flops, fft_conv_flops
from mad_jax.layers.initializers import torch_dense, torch_linear_init
from mad_jax.layers.hyena import hyena_recurrence
from mad_jax.layers.hyena_filter import ImplicitFilter, implicit_filter_flops
from mad_jax.layers.moe_paper import paper_routing_weights
from mad_jax.layers.registry import register_layer
from mad_jax.layers.short_conv import ShortConv, short_conv_flops, short_conv_state


ROUTINGS = ("top-k", "paper")


def top_k_gates(logits_BxLxE: jnp.ndarray, k: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Renormalised top-k routing weights.

    Returns (gates [B, L, E], float32, zero outside each token's top k, the top k summing to 1;
    top-k expert indices [B, L, k]).
    """
    logits_BxLxE = logits_BxLxE.astype(jnp.float32)
    top_BxLxK, idx_BxLxK = jax.lax.top_k(logits_BxLxE, k)
    weights_BxLxK = jax.nn.softmax(top_BxLxK, axis=-1)
    onehot_BxLxKxE = jax.nn.one_hot(idx_BxLxK, logits_BxLxE.shape[-1], dtype=jnp.float32)
    return jnp.einsum("blk,blke->ble", weights_BxLxK, onehot_BxLxKxE), idx_BxLxK


def load_balancing_loss(logits_BxLxE: jnp.ndarray, idx_BxLxK: jnp.ndarray) -> jnp.ndarray:
    """Switch-Transformer auxiliary loss E * sum_e f_e P_e (float32 scalar, 1 when balanced)."""
    num_experts = logits_BxLxE.shape[-1]
    probs_BxLxE = jax.nn.softmax(logits_BxLxE.astype(jnp.float32), axis=-1)
    assign_BxLxKxE = jax.nn.one_hot(idx_BxLxK, num_experts, dtype=jnp.float32)
    frac_E = jnp.mean(assign_BxLxKxE, axis=(0, 1, 2))
    prob_E = jnp.mean(probs_BxLxE, axis=(0, 1))
    return num_experts * jnp.sum(frac_E * prob_E)


class HyenaExperts(nn.Module):
    """Router-mixed narrow Hyena experts (see the module docstring).

    Fields (defaults are the MAD `hyena-experts` config, configs/layers/hyena-experts.yml):
      num_experts E (8), active_experts k (2), expert_width d (16, the reference's `dim_inner`),
      order N (2), short_filter_order (3), filter_order: FFN width of the implicit filter (16),
      filter_emb_dim / filter_num_inner / filter_sin_freq / max_length as in `Hyena`,
      routing: "top-k" (renormalised top-k, with the balancing loss) or "paper" (the MAD
        paper code's softmax over all experts with the non-top-k logits zeroed, no loss),
      aux_loss_coef: scale of the sown load-balancing loss under top-k routing (0.01),
      kernel_impl: passed to `mad_jax.ops.causal_conv`.
    """

    num_experts: int = 8
    active_experts: int = 2
    expert_width: int = 16
    order: int = 2
    short_filter_order: int = 3
    filter_order: int = 16
    filter_emb_dim: int = 3
    filter_num_inner: int = 2
    filter_sin_freq: float = 1.0
    max_length: int | None = None
    routing: str = "top-k"
    aux_loss_coef: float = 0.01
    kernel_impl: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def _check(self) -> int:
        if self.order < 2:
            raise ValueError(f"Hyena order must be at least 2, got {self.order}")
        if not 1 <= self.active_experts <= self.num_experts:
            raise ValueError(f"active_experts must be in [1, {self.num_experts}], "
                             f"got {self.active_experts}")
        if self.routing not in ROUTINGS:
            raise ValueError(f"unknown routing {self.routing!r}; valid: {', '.join(ROUTINGS)}")
        return self.num_experts * self.expert_width

    @nn.compact
    def __call__(self, x_BxLxD: jnp.ndarray) -> jnp.ndarray:
        batch, seq_len, dim = x_BxLxD.shape
        width = self._check()
        x_BxLxD = x_BxLxD.astype(self.dtype)
        u_BxLxT = torch_dense(self, (self.order + 1) * width, ("embed", "mlp"), "in_proj",
                              use_bias=True)(x_BxLxD)
        u_BxLxT = ShortConv(self.short_filter_order, dtype=self.dtype,
                            param_dtype=self.param_dtype, name="short_filter")(u_BxLxT)
        *gates, v_BxLxW = jnp.split(u_BxLxT, self.order + 1, axis=-1)

        channels = (self.order - 1) * width
        h_LxC = ImplicitFilter(channels, max_length=self.max_length, ffn_width=self.filter_order,
                               emb_dim=self.filter_emb_dim, num_inner=self.filter_num_inner,
                               sin_freq=self.filter_sin_freq, param_dtype=self.param_dtype,
                               name="filter")(seq_len)
        bias_C = self.param("bias", nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                                 ("mlp",)),
                            (channels,), self.param_dtype)
        y_BxLxW = hyena_recurrence(gates, v_BxLxW, h_LxC, bias_C, self.kernel_impl)
        y_BxLxDexE = y_BxLxW.reshape(batch, seq_len, self.expert_width, self.num_experts)

        router = nn.Dense(self.num_experts, dtype=jnp.float32, param_dtype=self.param_dtype,
                          kernel_init=nn.with_logical_partitioning(
                              torch_linear_init(), ("embed", None)),
                          bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
                          name="router")
        logits_BxLxE = router(x_BxLxD.astype(jnp.float32))
        if self.routing == "paper":
            gates_BxLxE = paper_routing_weights(logits_BxLxE, self.active_experts)
        else:
            gates_BxLxE, idx_BxLxK = top_k_gates(logits_BxLxE, self.active_experts)
            self.sow("losses", "aux_loss",
                     self.aux_loss_coef * load_balancing_loss(logits_BxLxE, idx_BxLxK))

        mixed_BxLxDe = jnp.einsum("blde,ble->bld", y_BxLxDexE.astype(jnp.float32), gates_BxLxE)
        return torch_dense(self, dim, ("mlp", "embed"), "out_proj",
                           use_bias=True)(mixed_BxLxDe.astype(self.dtype))

    def flops(self, dim: int, seq_len: int) -> int:
        """Forward FLOPs per sequence, all E experts evaluated (W = E d): input projection
        2 L D (N+1) W + bias, short filter 2 K L (N+1) W, filter generation (C = (N-1) W), per
        recurrence step a gate product L W, an FFT convolution over W channels and the skip
        2 L W, the final gate L W, the router 2 L D E + L E, the softmax-weighted mix 2 L W and
        the shared output projection 2 L d D + L D."""
        width = self._check()
        total = (self.order + 1) * width
        n_conv = self.order - 1
        return int(dense_flops(seq_len, dim, total) + seq_len * total
                   + short_conv_flops(self.short_filter_order, seq_len, total)
                   + implicit_filter_flops(seq_len, n_conv * width, self.filter_order,
                                           self.filter_emb_dim, self.filter_num_inner)
                   + n_conv * (seq_len * width + fft_conv_flops(seq_len, width)
                               + 2 * seq_len * width)
                   + seq_len * width
                   + dense_flops(seq_len, dim, self.num_experts) + seq_len * self.num_experts
                   + 2 * seq_len * width
                   + dense_flops(seq_len, self.expert_width, dim) + seq_len * dim)

    def state_size(self, dim: int, seq_len: int) -> int:
        """Numbers kept per sequence to generate token L+1 after L tokens: every expert's long
        convolution input history (N-1) * E d * L plus the short filters' tails
        (K-1) * (N+1) E d. Default at D=128: 128 L + 768."""
        width = self._check()
        return int((self.order - 1) * width * seq_len
                   + short_conv_state(self.short_filter_order, (self.order + 1) * width))


register_layer("hyena-experts", HyenaExperts, {"num_experts": 8, "active_experts": 2,
                                               "expert_width": 16, "order": 2,
                                               "short_filter_order": 3, "filter_order": 16})
