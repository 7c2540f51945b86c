"""Top-k mixture-of-experts channel mixer (`moe-mlp`) with a Switch-style load-balancing loss.

Each expert is the reference's gated unit of width F (athms/mad-lab `MoeMlp`, "MoE GLU"):
    expert_e(x) = W_down_e ((x W_up_e) * gelu(x W_gate_e))
with W_up_e, W_gate_e: [D, F] and W_down_e: [F, D], GELU in its tanh approximation. A linear
router gives softmax probabilities p over E experts; each token goes to its top-k experts, weighted
by their probabilities renormalised to sum to 1:
    y = sum_{e in topk(p)} (p_e / sum_{e' in topk(p)} p_e') expert_e(x)
The load-balancing loss (Switch Transformer, Fedus et al. 2021, extended to top-k),
    aux = E * sum_e f_e * P_e,
with f_e the fraction of the T*k (token, slot) assignments that go to expert e and P_e the mean
router probability of e over the T tokens, is 1.0 for perfectly balanced routing; the layer sows
`aux_loss_coef * aux` under ("losses", "aux_loss").

Deviations from the reference, where its code does not do what it describes (`moe-mlp-paper`,
in `moe_paper.py`, computes what the reference's code does, with its parameter count):
  * routing: the reference zeroes the non-top-k *logits* and then softmaxes over all E, so every
    expert keeps a nonzero weight; here non-top-k experts get exactly zero weight;
  * its down projection is one dense [E*F, E*D] matrix (every expert's output reads every expert's
    hidden units); here each expert has its own [F, D] map (block-diagonal), fan-in F at init;
  * its unused `gates` parameter is omitted, and it has no load-balancing loss; this layer adds one.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mad_jax.layers.accounting import dense_flops
from mad_jax.layers.initializers import torch_linear_init
from mad_jax.layers.registry import register_layer


def load_balancing_loss(probs_TxE: jnp.ndarray, expert_index_TxK: jnp.ndarray) -> jnp.ndarray:
    """Switch-style balance loss E * sum_e f_e P_e (1.0 when routing is uniform), in float32.

    probs: [T, E] router softmax probabilities; expert_index: [T, k] the experts each token goes to.
    f_e = (assignments to e) / (T * k); P_e = mean_t probs[t, e]. Gradients flow through P only.
    """
    num_experts = probs_TxE.shape[-1]
    assign_TxKxE = jax.nn.one_hot(expert_index_TxK, num_experts, dtype=jnp.float32)
    frac_E = jax.lax.stop_gradient(jnp.mean(jnp.sum(assign_TxKxE, axis=1), axis=0)
                                   / expert_index_TxK.shape[-1])
    prob_E = jnp.mean(probs_TxE.astype(jnp.float32), axis=0)
    return num_experts * jnp.sum(frac_E * prob_E)


class MoEMLP(nn.Module):
    """Top-k mixture of gated MLP experts (see the module docstring), `moe-mlp`.

    The experts run densely (every expert on every token, then masked by the routing weights): at
    expert width 16 that is cheaper than gathering per-token weights. `flops` counts what a sparse
    dispatch does: the router plus only the k active experts per token.
    The routing weights [B, L, E] (exactly k nonzero per token, summing to 1) are sown under
    ("intermediates", "routing_weights") for inspection.
    """

    num_experts: int = 8
    active_experts: int = 2
    expert_dim: int = 16
    aux_loss_coef: float = 0.01
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxLxD: jnp.ndarray) -> jnp.ndarray:
        dim = x_BxLxD.shape[-1]
        n_exp, k, inner = self.num_experts, self.active_experts, self.expert_dim
        if not 1 <= k <= n_exp:
            raise ValueError(f"active_experts must be in [1, {n_exp}], got {k}")
        f32 = jnp.float32

        # A linear router with a zero-initialised bias (the reference's nn.Linear, whose bias the
        # backbone zeroes); logits, softmax and top-k in float32.
        router_DxE = self.param("router_kernel", nn.with_logical_partitioning(
            torch_linear_init(), ("embed", None)), (dim, n_exp), self.param_dtype)
        router_bias_E = self.param("router_bias", nn.with_logical_partitioning(
            nn.initializers.zeros, (None,)), (n_exp,), self.param_dtype)
        logits_BxLxE = (jnp.einsum("bld,de->ble", x_BxLxD.astype(f32), router_DxE.astype(f32))
                        + router_bias_E.astype(f32))
        probs_BxLxE = jax.nn.softmax(logits_BxLxE, axis=-1)
        top_p_BxLxK, top_idx_BxLxK = jax.lax.top_k(probs_BxLxE, k)
        top_w_BxLxK = top_p_BxLxK / jnp.sum(top_p_BxLxK, axis=-1, keepdims=True)
        weights_BxLxE = jnp.einsum("blk,blke->ble", top_w_BxLxK,
                                   jax.nn.one_hot(top_idx_BxLxK, n_exp, dtype=f32))

        expert_init = torch_linear_init(batch_axis=(0,))  # fan-in of each expert's own matrix
        up_init = nn.with_logical_partitioning(expert_init, (None, "embed", "mlp"))
        down_init = nn.with_logical_partitioning(expert_init, (None, "mlp", "embed"))
        w_up_ExDxF = self.param("w_up", up_init, (n_exp, dim, inner), self.param_dtype)
        w_gate_ExDxF = self.param("w_gate", up_init, (n_exp, dim, inner), self.param_dtype)
        w_down_ExFxD = self.param("w_down", down_init, (n_exp, inner, dim), self.param_dtype)

        x_BxLxD = x_BxLxD.astype(self.dtype)
        up_BxLxExF = jnp.einsum("bld,edf->blef", x_BxLxD, w_up_ExDxF.astype(self.dtype))
        gate_BxLxExF = jnp.einsum("bld,edf->blef", x_BxLxD, w_gate_ExDxF.astype(self.dtype))
        hidden_BxLxExF = up_BxLxExF * jax.nn.gelu(gate_BxLxExF, approximate=True)
        # Weighting before the (linear) down projection equals weighting each expert's output.
        hidden_BxLxExF = hidden_BxLxExF * weights_BxLxE.astype(self.dtype)[..., None]
        y_BxLxD = jnp.einsum("blef,efd->bld", hidden_BxLxExF, w_down_ExFxD.astype(self.dtype))

        aux = load_balancing_loss(probs_BxLxE.reshape(-1, n_exp), top_idx_BxLxK.reshape(-1, k))
        self.sow("losses", "aux_loss", self.aux_loss_coef * aux)
        self.sow("intermediates", "routing_weights", weights_BxLxE)
        return y_BxLxD

    def flops(self, dim: int, seq_len: int) -> int:
        """Sparse-dispatch FLOPs (not the dense computation this implementation runs):
        router 2*L*D*E and softmax L*E; for each of the k active experts per token two [D, F] maps,
        one [F, D] map, GELU and the gating product (2 per hidden element); the weighted combination
        2*k*L*D. Top-k selection and the auxiliary loss are not counted.
        """
        k, inner = self.active_experts, self.expert_dim
        router = dense_flops(seq_len, dim, self.num_experts) + seq_len * self.num_experts
        expert = (2 * dense_flops(seq_len, dim, inner) + dense_flops(seq_len, inner, dim)
                  + 2 * seq_len * inner)
        return int(router + k * expert + 2 * k * seq_len * dim)

    def state_size(self, dim: int, seq_len: int) -> int:
        """0: position-wise, nothing is kept between tokens."""
        return 0


register_layer("moe-mlp", MoEMLP, {"num_experts": 8, "active_experts": 2, "expert_dim": 16})
