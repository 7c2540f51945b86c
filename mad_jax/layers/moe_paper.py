"""`moe-mlp-paper`: the MAD paper's mixture-of-experts GLU, as the MAD paper's code computes it
(athms/mad-lab `MoeMlp`, configs/layers/moe-mlp.yml), and the routing it uses.

With E experts of inner width F on x [B, L, D]:
    h = (x W_up) * gelu_tanh(x W_gate)                 W_up, W_gate: [D, E F]
    z = h W_down, viewed as [B, L, D, E]               W_down: [E F, D E], one dense matrix
    y = sum_e w_e z[..., e]
so every expert's output reads every expert's hidden units (the down map is not block-diagonal),
and z's channel index is d * E + e. The routing weights w [B, L, E] are the paper code's
(`paper_routing_weights`): router logits r = x W_r + b_r, every logit below the k-th largest set
to 0 (not removed), then a softmax over all E, so the non-top-k experts keep weight exp(0) / Z.
There is no balancing loss. The reference also holds a `gates` [E, F] parameter, drawn from
N(0, 1), that its forward never reads; it is kept here, unread, so that the layer has the
reference's parameter count (165,000 at the MAD defaults), which MAD's iso-parameter
comparisons are made at. `moe-mlp` is the textbook sparse top-k layer.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mad_jax.layers.accounting import dense_flops
from mad_jax.layers.initializers import torch_dense, torch_linear_init
from mad_jax.layers.registry import register_layer


def paper_routing_weights(logits_BxLxE: jnp.ndarray, k: int) -> jnp.ndarray:
    """Routing weights [B, L, E] (float32) as the MAD paper's code computes them: logits below
    each token's k-th largest are replaced by 0 and a softmax is taken over all E experts.
    Ties with the k-th largest are kept, as the reference's `scores < min_score` keeps them."""
    logits_BxLxE = logits_BxLxE.astype(jnp.float32)
    kth_BxLx1 = jax.lax.top_k(logits_BxLxE, k)[0][..., -1:]
    kept_BxLxE = jnp.where(logits_BxLxE < kth_BxLx1, 0.0, logits_BxLxE)
    return jax.nn.softmax(kept_BxLxE, axis=-1)


class PaperMoEMLP(nn.Module):
    """The MAD paper code's MoE GLU (see the module docstring): [B, L, D] -> [B, L, D].

    Fields (defaults: configs/layers/moe-mlp.yml): num_experts E (8), active_experts k (2),
    expert_dim F (16, the reference's `dim_inner`), use_bias on the up, gate and down maps
    (False, the config's `bias`); the router always has a bias, zero at init.
    """

    num_experts: int = 8
    active_experts: int = 2
    expert_dim: int = 16
    use_bias: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def _check(self) -> None:
        if not 1 <= self.active_experts <= self.num_experts:
            raise ValueError(f"active_experts must be in [1, {self.num_experts}], "
                             f"got {self.active_experts}")

    @nn.compact
    def __call__(self, x_BxLxD: jnp.ndarray) -> jnp.ndarray:
        self._check()
        batch, seq_len, dim = x_BxLxD.shape
        n_exp, inner = self.num_experts, self.expert_dim
        # Unread, as in the reference (see the module docstring).
        self.param("gates", nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                         (None, "mlp")),
                   (n_exp, inner), self.param_dtype)

        h_BxLxD = x_BxLxD.astype(self.dtype)
        up_BxLxG = torch_dense(self, n_exp * inner, ("embed", "mlp"), "w_up",
                               self.use_bias)(h_BxLxD)
        gate_BxLxG = torch_dense(self, n_exp * inner, ("embed", "mlp"), "w_gate",
                                 self.use_bias)(h_BxLxD)
        hidden_BxLxG = up_BxLxG * jax.nn.gelu(gate_BxLxG, approximate=True)
        z_BxLxC = torch_dense(self, dim * n_exp, ("mlp", "embed"), "w_down",
                              self.use_bias)(hidden_BxLxG)
        z_BxLxDxE = z_BxLxC.reshape(batch, seq_len, dim, n_exp)

        # Router logits and softmax in float32 (the bias is zero at init: the backbone zeroes it).
        router = nn.Dense(n_exp, dtype=jnp.float32, param_dtype=self.param_dtype,
                          kernel_init=nn.with_logical_partitioning(torch_linear_init(),
                                                                   ("embed", None)),
                          bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
                          name="router")
        logits_BxLxE = router(x_BxLxD.astype(jnp.float32))
        weights_BxLxE = paper_routing_weights(logits_BxLxE, self.active_experts)
        self.sow("intermediates", "routing_weights", weights_BxLxE)
        y_BxLxD = jnp.einsum("blde,ble->bld", z_BxLxDxE.astype(jnp.float32), weights_BxLxE)
        return y_BxLxD.astype(self.dtype)

    def flops(self, dim: int, seq_len: int) -> int:
        """Forward FLOPs per sequence of this dense computation (every expert on every token):
        up and gate maps 2 * 2 L D E F, GELU and gating product 2 L E F, the dense down map
        2 L E F D E, router 2 L D E + L E (bias) + L E (softmax), the weighted sum 2 L D E.
        Biases of the up/gate/down maps add L E F, L E F, L D E when used; top-k is not counted.
        """
        self._check()
        n_exp, inner = self.num_experts, self.expert_dim
        width = n_exp * inner
        maps = 2 * dense_flops(seq_len, dim, width) + dense_flops(seq_len, width, dim * n_exp)
        biases = (2 * seq_len * width + seq_len * dim * n_exp) if self.use_bias else 0
        router = dense_flops(seq_len, dim, n_exp) + 2 * seq_len * n_exp
        return int(maps + biases + 2 * seq_len * width + router + 2 * seq_len * dim * n_exp)

    def state_size(self, dim: int, seq_len: int) -> int:
        """0: position-wise, nothing is kept between tokens."""
        return 0


register_layer("moe-mlp-paper", PaperMoEMLP, {"num_experts": 8, "active_experts": 2,
                                              "expert_dim": 16, "use_bias": False})
