"""Training parity with the PyTorch MAD reference (athms/mad-lab): same weights, batches, optimizer.

    .venv/bin/python -m benchmarks.reference_parity --reference=/path/to/mad-lab \\
        --flash-attn=/path/to/flash-attention --archs="mh-attention swiglu,hyena swiglu" \\
        --tasks=in-context-recall,compression --steps=200 --batch-size=16 --lr=1e-3 --wd=0.1
    .venv/bin/python -m benchmarks.reference_parity --reference=... --init-report

For every (architecture, task) it builds the model twice, ours with `mad_jax.models.build` and the
reference's `LanguageModel` / `AutoEncoder` from its layer classes and configs/layers/*.yml as its
benchmark.py does (max_length = the task's seq_len, RMSNorm unless --norm=layernorm), copies OUR
initial weights into the reference (`benchmarks/reference_weights.py`), then trains both in float32
on the same batches (`mad_jax.tasks`, our batch order) with AdamW (b1 .9, b2 .999, eps 1e-8,
decay on every parameter) and our cosine schedule: the torch side is given, each step, the learning
rate our step reports. Before training it compares, on the first batch, every block's norm and
mixer output (each side fed the reference's input to it) and every parameter's gradient. It
prints per-step losses side by side, the largest differences, and the test accuracy of each side
as the reference scores it (macro: torchmetrics MulticlassAccuracy on the reference side,
`mad_jax.training.losses.macro_accuracy` on ours), and writes
benchmarks/results/reference_parity.json.

--init-report builds both models with their own default inits over several seeds and prints
per-tensor std / mean side by side, plus the parameter count of every reference layer that builds
on a CPU, at its default config (width 128, seq 128), next to ours
(benchmarks/results/reference_parity_init.json).

PyTorch and the reference are imported only here, lazily. Running the reference on a CPU, in
memory and without editing the checkout: flash-attn's attention runs with use_flash_attn=False;
its rotary embedding, whose kernel is Triton-only, runs through flash-attn's own pure-torch
`apply_rotary_emb_torch`; the reference's Triton-only RMSNorm runs through its own `rms_norm_ref`;
Mamba's scan is the reference's `selective_scan_ref`. Modules that are absent (triton, the CUDA
extensions, transformers for the unused gated linear attention) are stubbed only while the
reference is imported, so that its imports succeed; none of their code runs.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import sys
import time
import types
from typing import Any

import numpy as np

from benchmarks import reference_weights

DEFAULT_ARCHS = ("mh-attention swiglu", "hyena swiglu", "hyena swiglu mh-attention swiglu",
                 "mamba swiglu")
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
TABLE_STEPS_EVERY = 20
# reference layer -> (our layer, overrides) that computes what the reference's code computes,
# where our registered default differs by design (README layer table).
REFERENCE_COMPUTATION = {"moe-mlp": ("moe-mlp-paper", {}),
                         "mh-hyena": ("mh-hyena", {"num_heads": 8}),
                         "hyena-experts": ("hyena-experts", {"routing": "paper"})}



class Reference(types.SimpleNamespace):
    """torch and the reference's modules, imported from a local checkout."""


def _stub_module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


def _identity_decorator(*args, **kwargs):
    """@triton.jit, @triton.autotune(...), @triton.heuristics(...): leave the function as is."""
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return args[0]
    return lambda fn: fn


@contextlib.contextmanager
def _import_stubs(torch):
    """Stand-ins for modules the reference imports but, on a CPU in float32, never runs.

    Installed only while the reference is imported and removed afterwards, so torch (which probes
    for triton) sees the real environment.
    """
    stubs = {}
    if importlib.util.find_spec("triton") is None:
        # The reference's norm and flash-attn's rotary module import Triton at module level; their
        # kernels are replaced by the pure-torch paths (see `import_reference`).
        language = _stub_module("triton.language", constexpr=object)
        stubs["triton.language"] = language
        stubs["triton"] = _stub_module("triton", jit=_identity_decorator,
                                       autotune=_identity_decorator,
                                       heuristics=_identity_decorator,
                                       Config=lambda *a, **k: None, language=language)
    if importlib.util.find_spec("transformers") is None:
        # Only the gated linear attention uses it (ACT2FN[gate_fn], default "swish"), and only at
        # construction, for the --init-report parameter count. Not in the reference's requirements.
        activations = _stub_module("transformers.activations", ACT2FN={"swish": torch.nn.SiLU()})
        stubs["transformers.activations"] = activations
        stubs["transformers"] = _stub_module("transformers", activations=activations)
    sys.modules.update(stubs)
    try:
        yield
    finally:
        for name in stubs:
            sys.modules.pop(name, None)


def import_reference(reference: str, flash_attn: str | None, torch_site: str | None,
                     torch_threads: int = 1) -> Reference:
    """Imports torch and the reference (read-only) for CPU float32 runs; exits with one line if
    either is missing."""
    if torch_site:
        sys.path.append(torch_site)
    try:
        import torch
    except ImportError:
        raise SystemExit("reference parity needs PyTorch: pip install torch (the CPU build is "
                         "enough), or pass --torch-site-packages=<site-packages of a venv with it>")
    reference = os.path.abspath(reference)
    if not os.path.isfile(os.path.join(reference, "mad", "model", "language_model.py")):
        raise SystemExit(f"--reference={reference} is not a mad-lab checkout (no "
                         "mad/model/language_model.py): clone github.com/athms/mad-lab and pass "
                         "its path")
    paths = [reference] + ([os.path.abspath(flash_attn)] if flash_attn else [])
    sys.path[:0] = paths
    if importlib.util.find_spec("flash_attn") is None:
        raise SystemExit("the reference's attention needs flash-attn's Python modules: pass "
                         "--flash-attn=<a flash-attention checkout or its flash_attn's parent>")
    # Import what probes for triton before the stub exists (lightning pulls in torch._dynamo).
    import pytorch_lightning  # noqa: F401
    import torch._dynamo  # noqa: F401
    import torchmetrics  # noqa: F401
    with _import_stubs(torch):
        registry = importlib.import_module("mad.registry")
        rmsnorm = importlib.import_module("mad.model.layers.ops.norm.rmsnorm")
        mamba = importlib.import_module("mad.model.layers.mamba")
        rotary = importlib.import_module("flash_attn.layers.rotary")
        metrics = importlib.import_module("mad.metrics")
        # selective_scan_interface imports the CUDA extension at module level; with it stubbed
        # the module loads and its pure-torch `selective_scan_ref` is used for the scan.
        sys.modules["selective_scan_cuda"] = _stub_module("selective_scan_cuda")
        try:
            scan = importlib.import_module(
                "mad.model.layers.ops.mamba_ssm.selective_scan_interface")
        finally:
            sys.modules.pop("selective_scan_cuda", None)
    # Mamba's forward takes the non-fused path (mamba_inner_fn is None) and calls the module's
    # selective_scan_fn: the reference's own pure-torch scan.
    mamba.mamba_inner_fn = None
    mamba.selective_scan_fn = scan.selective_scan_ref
    # flash-attn's rotary autograd functions call the Triton `apply_rotary` (forward, and with
    # conjugate=True for the backward); the same rotation in flash-attn's own torch code:
    rotary.apply_rotary = _rotary_in_torch(torch, rotary.apply_rotary_emb_torch)

    class RMSNormTorch(rmsnorm.RMSNorm):
        """The reference's RMSNorm (parameters, eps 1e-5) computed by its own `rms_norm_ref`
        instead of the Triton kernel."""

        def forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
            return rmsnorm.rms_norm_ref(x, self.weight, self.bias, residual=residual,
                                        eps=self.eps, prenorm=prenorm)

    torch.set_num_threads(torch_threads)
    return Reference(torch=torch, path=reference, registry=registry, Accuracy=metrics.Accuracy,
                     norms={"rmsnorm": RMSNormTorch, "layernorm": torch.nn.LayerNorm})


def _rotary_in_torch(torch, apply_rotary_emb_torch):
    def apply_rotary(x, cos, sin, seqlen_offsets=0, cu_seqlens=None, max_seqlen=None,
                     interleaved=False, inplace=False, conjugate=False):
        if cu_seqlens is not None or not isinstance(seqlen_offsets, int):
            raise NotImplementedError("variable-length rotary is not used by the MAD layers")
        seq_len = x.shape[1]
        cos = cos[seqlen_offsets:seqlen_offsets + seq_len]
        sin = sin[seqlen_offsets:seqlen_offsets + seq_len]
        out = apply_rotary_emb_torch(x, cos, -sin if conjugate else sin, interleaved)
        if inplace:
            x.copy_(out)
            return x
        return out
    return apply_rotary


def reference_layer_config(ref: Reference, name: str, *, dim: int, max_length: int) -> dict:
    """The reference's configs/layers/<name>.yml with dim and max_length set as its benchmark.py
    does, and attention without the flash kernel."""
    import yaml

    with open(os.path.join(ref.path, ref.registry.layer_registry[name]["cfg"])) as f:
        cfg = yaml.safe_load(f)
    cfg["dim"], cfg["max_length"] = dim, max_length
    if "use_flash_attn" in cfg:
        cfg["use_flash_attn"] = False
    if "window_size" in cfg:
        # YAML reads [-1, -1] as a list; MHA compares with the tuple (-1, -1) ("no window").
        cfg["window_size"] = tuple(cfg["window_size"])
    return cfg


def build_reference(ref: Reference, layers, *, vocab_size: int, max_length: int, backbone: str,
                    norm: str, dim: int = 128):
    cfgs = [reference_layer_config(ref, n, dim=dim, max_length=max_length) for n in layers]
    modules = [ref.registry.layer_registry[n]["module"] for n in layers]
    model = ref.registry.model_registry[backbone](
        dim=dim, vocab_size=vocab_size, layers=modules, layer_cfgs=cfgs, max_length=max_length,
        norm=ref.norms[norm])
    return model.float()


def copy_into_reference(ref: Reference, model, ours_params, layers, *, backbone: str,
                        norm: str) -> list[str]:
    """Loads our parameters into the reference model (strict); returns the reference tensors that
    keep their own values, with the reason. Raises on any unmapped or mis-shaped tensor."""
    torch = ref.torch
    mapped = reference_weights.to_reference(ours_params, layers, backbone=backbone, norm=norm)
    state = model.state_dict()
    problems = [f"{k}: ours {v.shape} vs reference {tuple(state[k].shape)}"
                for k, v in mapped.items() if k in state and tuple(state[k].shape) != v.shape]
    problems += [f"{k}: not in the reference model" for k in mapped if k not in state]
    kept = []
    for k in state:
        if k not in mapped:
            why = reference_weights.reference_own(k)
            if why is None:
                problems.append(f"{k}: reference tensor {tuple(state[k].shape)} has no source in "
                                "our parameters")
            else:
                kept.append(f"{k} ({why})")
    if problems:
        raise reference_weights.UnmappedParameterError(
            "weight copy failed: " + "; ".join(problems))
    model.load_state_dict({k: torch.from_numpy(mapped[k]) if k in mapped else v
                           for k, v in state.items()}, strict=True)
    return kept



def build_ours(layers, *, vocab_size: int, max_length: int, backbone: str, norm: str):
    from mad_jax import models
    return models.build(list(layers), vocab_size=vocab_size, max_length=max_length, dim=128,
                        backbone=backbone, norm=norm)


def our_train_state(model, sample_BxL, *, seed: int, lr: float, wd: float, total_steps: int,
                    decay_every_steps: int):
    import jax
    from flax.core import meta
    from mad_jax.training.optimizer import make_optimizer
    from mad_jax.training.steps import init_params, init_train_state

    tx = make_optimizer(b1=0.9, b2=0.999, eps=1e-8)
    init_rng, state_rng = jax.random.split(jax.random.key(seed))
    params = meta.unbox(init_params(model, init_rng, sample_BxL))
    state = init_train_state(params, tx, learning_rate=lr, weight_decay=wd,
                             total_steps=total_steps, rng=jax.random.key_data(state_rng),
                             decay_every_steps=decay_every_steps)
    return tx, state



def _rel(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b| (0 when both are 0)."""
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    return diff / scale if scale else diff


def compare_first_batch(ref: Reference, ref_model, model, params, batch, layers, *,
                        backbone: str, norm: str) -> dict:
    """Each block's norm and mixer output (both fed the reference's input to it), the backbone's
    pieces, the logits, the loss and every gradient, on one batch. Values are relative max
    differences (max |ours - ref| / max |ref|)."""
    import jax
    import jax.numpy as jnp
    from mad_jax.layers import registry
    from mad_jax.models.autoencoder import Decoder
    from mad_jax.models.blocks import make_norm
    from mad_jax.models.language_model import Unembed
    from mad_jax.tasks import IGNORE_INDEX
    from mad_jax.training import losses

    torch = ref.torch
    captured = {}

    def hook(key):
        def fn(module, inputs, output):
            captured[key] = (inputs[0].detach().numpy(), output.detach().numpy())
        return fn

    stack = ref_model.model if backbone == "language-model" else ref_model.encoder
    handles = []
    for i, seq in enumerate(stack):
        handles += [seq[0].register_forward_hook(hook(f"block_{i}/norm")),
                    seq[1].register_forward_hook(hook(f"block_{i}/mixer"))]
    handles.append(ref_model.unembed.register_forward_hook(hook("unembed")))
    if backbone == "autoencoder":
        # decode() calls the decoder's modules one by one, not the Sequential: hook its last one.
        handles.append(ref_model.decoder[-1].register_forward_hook(hook("decoder")))
    inputs = torch.from_numpy(np.asarray(batch["inputs"], np.int64))
    targets = torch.from_numpy(np.asarray(batch["targets"], np.int64))
    ref_model.zero_grad(set_to_none=True)
    logits_ref = ref_model(inputs)
    loss_ref = torch.nn.functional.cross_entropy(
        logits_ref.reshape(-1, logits_ref.shape[-1]), targets.reshape(-1),
        ignore_index=IGNORE_INDEX)
    loss_ref.backward()
    for h in handles:
        h.remove()

    out = {"blocks": []}
    for i, name in enumerate(layers):
        block = params["encoder"][f"block_{i}"]
        x_in, n_out = captured[f"block_{i}/norm"]
        ours_norm = make_norm(norm, dtype=jnp.float32, param_dtype=jnp.float32)
        norm_ours = np.asarray(ours_norm.apply({"params": block["norm"]}, jnp.asarray(x_in)))
        m_in, m_out = captured[f"block_{i}/mixer"]
        mixer = registry.make_layer(name)
        mixer_ours, _ = mixer.apply({"params": block["mixer"]}, jnp.asarray(m_in),
                                    mutable=["losses"])
        out["blocks"].append({"block": i, "layer": name, "norm": _rel(norm_ours, n_out),
                              "mixer": _rel(np.asarray(mixer_ours), m_out)})
    u_in, u_out = captured["unembed"]
    unembed = Unembed(logits_ref.shape[-1], norm)
    out["unembed"] = _rel(np.asarray(unembed.apply({"params": params["unembed"]},
                                                   jnp.asarray(u_in))), u_out)
    if backbone == "autoencoder":
        _, d_out = captured["decoder"]
        batch_size, length = inputs.shape
        code_BxD = ref_model.encode(inputs)[0].detach().numpy()
        decoder = Decoder(length, norm)
        dec_ours = np.asarray(decoder.apply({"params": params["decoder"]}, jnp.asarray(code_BxD)))
        out["decoder"] = _rel(dec_ours.reshape(batch_size * length, -1), d_out)

    def loss_fn(p):
        logits, _ = model.apply({"params": p}, jnp.asarray(batch["inputs"]), mutable=["losses"])
        stats = losses.token_stats(logits, jnp.asarray(batch["targets"]))
        return losses.mean_cross_entropy(stats), logits

    (loss_ours, logits_ours), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    out["logits"] = _rel(np.asarray(logits_ours), logits_ref.detach().numpy())
    out["loss"] = {"ours": float(loss_ours), "reference": float(loss_ref.detach())}
    grads_ref_layout = reference_weights.to_reference(jax.device_get(grads), layers,
                                                      backbone=backbone, norm=norm)
    out["grads"] = {}
    for k, p in ref_model.named_parameters():
        if k in grads_ref_layout and p.grad is not None:
            out["grads"][k] = _rel(grads_ref_layout[k], p.grad.numpy())
        elif k not in grads_ref_layout:
            out["grads"][k] = None  # reference-only parameter (e.g. the Hyena filter's z)
    return out


def print_first_batch(diag: dict, tol: float) -> None:
    print(f"  first batch: loss ours {diag['loss']['ours']:.7f} reference "
          f"{diag['loss']['reference']:.7f}; logits rel diff {diag['logits']:.2e}; unembed "
          f"{diag['unembed']:.2e}"
          + (f"; decoder {diag['decoder']:.2e}" if "decoder" in diag else ""))
    for b in diag["blocks"]:
        flag = "  <--" if max(b["norm"], b["mixer"]) > tol else ""
        print(f"    block {b['block']} {b['layer']:<14} norm {b['norm']:.2e}  mixer "
              f"{b['mixer']:.2e}{flag}")
    grads = {k: v for k, v in diag["grads"].items() if v is not None}
    worst = sorted(grads.items(), key=lambda kv: -kv[1])[:5]
    over = sum(v > tol for v in grads.values())
    print(f"    gradients: {over} of {len(grads)} tensors over {tol:g} relative; worst: " +
          ", ".join(f"{k} {v:.1e}" for k, v in worst))
    ref_only = [k for k, v in diag["grads"].items() if v is None]
    if ref_only:
        print(f"    trained in the reference only: {', '.join(ref_only)}")



def macro_accuracy_ours(model, state, test_x, test_y, batch_size: int) -> tuple[float, float]:
    """(macro, micro) test accuracy of our model through our eval step."""
    import jax
    from mad_jax.training import losses
    from mad_jax.training.steps import make_eval_step

    eval_step = jax.jit(make_eval_step(model))
    sums: dict[str, np.ndarray] = {}
    for start in range(0, len(test_x), batch_size):
        m = eval_step(state, {"inputs": test_x[start:start + batch_size],
                              "targets": test_y[start:start + batch_size]})
        for k, v in jax.device_get(m).items():
            sums[k] = sums.get(k, 0) + np.asarray(v, np.float64)
    macro = losses.macro_accuracy(sums["class_hits"], sums["class_targets"],
                                  sums["class_predictions"])
    return float(macro), float(sums["correct"] / max(sums["count"], 1.0))


def macro_accuracy_reference(ref: Reference, ref_model, vocab_size: int, test_x, test_y,
                             batch_size: int) -> tuple[float, float]:
    """(macro, micro) test accuracy of the reference model: its `mad.metrics.Accuracy`
    (torchmetrics MulticlassAccuracy(num_classes=V, ignore_index=-100)) over the whole set."""
    from mad_jax.tasks import IGNORE_INDEX

    torch = ref.torch
    metric = ref.Accuracy(num_classes=vocab_size, ignore_index=IGNORE_INDEX)
    correct = count = 0
    ref_model.eval()
    with torch.no_grad():
        for start in range(0, len(test_x), batch_size):
            x = torch.from_numpy(np.asarray(test_x[start:start + batch_size], np.int64))
            y = torch.from_numpy(np.asarray(test_y[start:start + batch_size], np.int64))
            logits = ref_model(x)
            metric.update(logits, y)
            mask = y != IGNORE_INDEX
            correct += int(((logits.argmax(-1) == y) & mask).sum())
            count += int(mask.sum())
    ref_model.train()
    return float(metric.compute()), correct / max(count, 1)


def run_combo(ref: Reference, arch: str, task: str, args) -> dict:
    import jax
    import jax.numpy as jnp
    from mad_jax import tasks
    from mad_jax.models import parse_layers
    from mad_jax.training.steps import make_train_step

    torch = ref.torch
    layers = parse_layers(arch)
    setting = tasks.settings(task)[0]
    vocab, seq_len = int(setting["vocab_size"]), int(setting["seq_len"])
    backbone = tasks.TASK_BACKBONE[task]
    train_x, train_y = tasks.load(task, setting, "train", seed=args.data_seed)
    test_x, test_y = tasks.load(task, setting, "test", seed=args.data_seed)

    model = build_ours(layers, vocab_size=vocab, max_length=seq_len, backbone=backbone,
                       norm=args.norm)
    tx, state = our_train_state(model, jnp.asarray(train_x[:1]), seed=args.seed, lr=args.lr,
                                wd=args.wd, total_steps=args.steps,
                                decay_every_steps=args.decay_every_steps)
    torch.manual_seed(args.seed)
    ref_model = build_reference(ref, layers, vocab_size=vocab, max_length=seq_len,
                                backbone=backbone, norm=args.norm)
    kept = copy_into_reference(ref, ref_model, jax.device_get(state.params), layers,
                               backbone=backbone, norm=args.norm)
    print(f"\n== {arch} | {task} (vocab {vocab}, seq_len {seq_len}, {backbone}, {args.norm})")
    for k in kept:
        print(f"  reference keeps its own {k}")

    batches = tasks.batches(train_x, train_y, batch_size=args.batch_size, seed=args.seed,
                            shuffle=True, num_epochs=None, drop_remainder=True)
    batch_list = [next(batches) for _ in range(args.steps)]
    diag = compare_first_batch(ref, ref_model, model, state.params, batch_list[0], layers,
                               backbone=backbone, norm=args.norm)
    print_first_batch(diag, args.tol)

    step_fn = jax.jit(make_train_step(model, tx))
    optimizer = torch.optim.AdamW(ref_model.parameters(), lr=args.lr, betas=(0.9, 0.999),
                                  eps=1e-8, weight_decay=args.wd)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=tasks.IGNORE_INDEX)
    ours, theirs, lrs = [], [], []
    wall = {"ours": 0.0, "reference": 0.0}
    ref_model.train()
    for batch in batch_list:
        t0 = time.perf_counter()
        state, metrics = step_fn(state, batch)
        metrics = jax.device_get(metrics)
        wall["ours"] += time.perf_counter() - t0
        lr = float(metrics["learning_rate"])
        t0 = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        x = torch.from_numpy(np.asarray(batch["inputs"], np.int64))
        y = torch.from_numpy(np.asarray(batch["targets"], np.int64))
        logits = ref_model(x)
        loss = loss_fn(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        optimizer.step()
        wall["reference"] += time.perf_counter() - t0
        ours.append(float(metrics["loss"]))
        theirs.append(float(loss.detach()))
        lrs.append(lr)

    acc_ours = macro_accuracy_ours(model, state, test_x, test_y, args.eval_batch_size)
    acc_ref = macro_accuracy_reference(ref, ref_model, vocab, test_x, test_y,
                                       args.eval_batch_size)
    diffs = np.abs(np.asarray(ours) - np.asarray(theirs))
    result = {
        "arch": arch, "task": task, "vocab_size": vocab, "seq_len": seq_len, "backbone": backbone,
        "loss_ours": ours, "loss_reference": theirs, "learning_rate": lrs,
        "max_abs_diff_first10": float(diffs[:10].max()), "max_abs_diff_all": float(diffs.max()),
        "max_rel_diff_first10": float((diffs[:10] / np.abs(theirs[:10])).max()),
        "test_macro_acc": {"ours": acc_ours[0], "reference": acc_ref[0]},
        "test_micro_acc": {"ours": acc_ours[1], "reference": acc_ref[1]},
        "wall_s": wall, "reference_own_tensors": kept, "first_batch": diag,
    }
    print_loss_table(result, args.steps)
    return result


def table_steps(steps: int) -> list[int]:
    return sorted(set(range(1, min(10, steps) + 1)) |
                  set(range(TABLE_STEPS_EVERY, steps + 1, TABLE_STEPS_EVERY)) | {steps})


def print_loss_table(r: dict, steps: int) -> None:
    print(f"  {'step':>5} {'ours':>11} {'reference':>11} {'diff':>10}")
    for s in table_steps(steps):
        a, b = r["loss_ours"][s - 1], r["loss_reference"][s - 1]
        print(f"  {s:>5} {a:>11.6f} {b:>11.6f} {a - b:>10.2e}")
    print(f"  max |diff|: steps 1-10 {r['max_abs_diff_first10']:.2e} (relative "
          f"{r['max_rel_diff_first10']:.1e}), all steps {r['max_abs_diff_all']:.2e}")
    print(f"  test accuracy macro: ours {r['test_macro_acc']['ours']:.4f} reference "
          f"{r['test_macro_acc']['reference']:.4f}  (micro: ours {r['test_micro_acc']['ours']:.4f}"
          f" reference {r['test_micro_acc']['reference']:.4f})")
    print(f"  wall: ours {r['wall_s']['ours']:.1f}s reference {r['wall_s']['reference']:.1f}s")



def _tensor_stats(arrays: list[np.ndarray]) -> tuple[float, float]:
    """(std, mean) of the values pooled over seeds."""
    values = np.concatenate([a.ravel() for a in arrays]).astype(np.float64)
    return float(values.std()), float(values.mean())


def _init_mismatch(o_std, o_mean, r_std, r_mean, n: int) -> str:
    """"" when the two inits agree within sampling noise, else a short reason. A sample std over
    n values varies by about std / sqrt(2 n); 4 of those (plus 2%) is the bar."""
    if r_std == 0 and o_std == 0:
        return "" if np.isclose(o_mean, r_mean, rtol=1e-6, atol=1e-7) else "different constant"
    bar = 0.02 + 4.0 / np.sqrt(2.0 * n)
    if r_std == 0 or abs(o_std / r_std - 1.0) > bar:
        return "std"
    if abs(o_mean - r_mean) > 4.0 * max(o_std, r_std) / np.sqrt(n) + 1e-7:
        return "mean"
    return ""


def init_report(ref: Reference, args) -> dict:
    import jax
    import jax.numpy as jnp
    from flax.core import meta
    from mad_jax import tasks
    from mad_jax.layers import registry as our_registry
    from mad_jax.models import count_params, parse_layers
    from mad_jax.tasks.registry import get_task
    from mad_jax.training.steps import init_params

    torch = ref.torch
    report: dict[str, Any] = {"tensors": [], "layer_params": []}
    for arch in args.archs:
        layers = parse_layers(arch)
        for task in args.tasks:
            setting = tasks.settings(task)[0]
            vocab, seq_len = int(setting["vocab_size"]), int(setting["seq_len"])
            backbone = tasks.TASK_BACKBONE[task]
            model = build_ours(layers, vocab_size=vocab, max_length=seq_len, backbone=backbone,
                               norm=args.norm)
            length = get_task(task).length(tasks.resolve_params(task, setting))
            sample = jnp.zeros((1, length), jnp.int32)
            ours_seeds, ref_seeds = [], []
            for seed in range(args.init_seeds):
                params = meta.unbox(init_params(model, jax.random.key(seed), sample))
                ours_seeds.append(reference_weights.to_reference(
                    jax.device_get(params), layers, backbone=backbone, norm=args.norm))
                torch.manual_seed(seed)
                ref_model = build_reference(ref, layers, vocab_size=vocab, max_length=seq_len,
                                            backbone=backbone, norm=args.norm)
                ref_seeds.append({k: v.detach().numpy().copy()
                                  for k, v in ref_model.state_dict().items()})
            print(f"\n== init: {arch} | {backbone} (vocab {vocab}, seq {seq_len}), "
                  f"{args.init_seeds} seeds: std (mean)")
            print(f"  {'reference tensor':<52} {'ours':>19} {'reference':>19} {'std ratio':>9}")
            for k in ref_seeds[0]:
                r_std, r_mean = _tensor_stats([s[k] for s in ref_seeds])
                o_std = o_mean = ratio = None
                own = reference_weights.reference_own(k)
                mismatch = "" if own else "not a parameter of ours"
                if k in ours_seeds[0]:
                    o_std, o_mean = _tensor_stats([s[k] for s in ours_seeds])
                    ratio = o_std / r_std if r_std else None
                    mismatch = _init_mismatch(o_std, o_mean, r_std, r_mean,
                                              ref_seeds[0][k].size * args.init_seeds)
                ours_txt = ("buffer" if own else "-") if o_std is None else \
                    f"{o_std:.4f} ({o_mean:+.4f})"
                ratio_txt = "" if ratio is None else f"{ratio:.3f}"
                flag = f"  <-- {mismatch}" if mismatch else ""
                print(f"  {k:<52} {ours_txt:>19} {r_std:.4f} ({r_mean:+.4f}) {ratio_txt:>9}{flag}")
                report["tensors"].append({"arch": arch, "backbone": backbone, "tensor": k,
                                          "ours_std": o_std, "ours_mean": o_mean,
                                          "reference_std": r_std, "reference_mean": r_mean,
                                          "mismatch": mismatch})

    print("\n== parameters per layer (width 128, seq 128, defaults; reference built on this CPU)")
    print(f"  {'layer':<28} {'ours':>9} {'reference':>10}   ours as the reference computes it")
    x = jnp.zeros((1, 128, 128), jnp.float32)

    def our_count(name, overrides=None):
        try:
            layer = our_registry.make_layer(name, **(overrides or {}))
            return count_params(layer.init(jax.random.key(0), x)["params"])
        except (KeyError, ValueError) as e:
            return f"n/a: {e}"

    for name in ref.registry.layer_registry:
        try:
            cfg = reference_layer_config(ref, name, dim=128, max_length=128)
            ref_count = sum(p.numel() for p in
                            ref.registry.layer_registry[name]["module"](**cfg).parameters())
        except Exception as e:  # noqa: BLE001 - the reason is the report
            ref_count = f"not on CPU: {type(e).__name__}: {str(e).splitlines()[0][:60]}"
        ours_count = our_count(name)
        variant = REFERENCE_COMPUTATION.get(name)
        variant_txt, variant_count = "", None
        if variant:
            variant_count = our_count(*variant)
            variant_txt = f"{variant[0]} {variant[1] or ''}: {variant_count}"
        print(f"  {name:<28} {ours_count!s:>9} {ref_count!s:>10}   {variant_txt}")
        report["layer_params"].append({"layer": name, "ours": ours_count,
                                       "reference": ref_count,
                                       "ours_reference_computation": variant_count})
    return report



def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", required=True, help="local mad-lab checkout")
    p.add_argument("--flash-attn", default=None,
                   help="directory holding flash_attn (if it is not importable already)")
    p.add_argument("--torch-site-packages", default=None,
                   help="a site-packages with torch, lightning, torchmetrics, einops, appended to "
                        "sys.path (e.g. a separate venv's)")
    p.add_argument("--archs", default=",".join(DEFAULT_ARCHS),
                   help="comma-separated architectures, each a layer string")
    p.add_argument("--tasks", default="in-context-recall,compression")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--decay-every-steps", type=int, default=1,
                   help="hold the learning rate this many steps (an epoch's steps: the "
                        "reference's per-epoch staircase)")
    p.add_argument("--norm", default="rmsnorm", choices=("rmsnorm", "layernorm"),
                   help="rmsnorm: the reference's benchmark.py; layernorm: its train.py")
    p.add_argument("--seed", type=int, default=0, help="our init and batch order")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--tol", type=float, default=1e-5, help="relative tolerance flagged")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch intra-op threads (1 is fastest for these small models on a shared "
                        "CPU)")
    p.add_argument("--init-report", action="store_true")
    p.add_argument("--init-seeds", type=int, default=3)
    p.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/...)")
    args = p.parse_args(argv)
    args.archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    ref = import_reference(args.reference, args.flash_attn, args.torch_site_packages,
                           args.torch_threads)
    t0 = time.perf_counter()
    if args.init_report:
        result = init_report(ref, args)
        default_out = "reference_parity_init.json"
    else:
        result = {"config": {k: v for k, v in vars(args).items()},
                  "combos": [run_combo(ref, arch, task, args)
                             for arch in args.archs for task in args.tasks]}
        default_out = "reference_parity.json"
    result["wall_s"] = time.perf_counter() - t0
    out = args.out or os.path.join(RESULTS_DIR, default_out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nwall {result['wall_s']:.0f}s; wrote {out}")


if __name__ == "__main__":
    main()
