"""Device meshes from config strings: "data:-1,fsdp:1,tensor:1" -> jax.sharding.Mesh.

The mesh always has the four axes of `MESH_AXES`, outermost first: `sweep` (independent runs of a
hyperparameter grid), `data` (data parallel), `fsdp` (data parallel with parameters and optimizer
state sharded, ZeRO-3 style) and `tensor` (Megatron-style tensor parallel). Axes not named in the
config have size 1, so a rule that maps a logical axis to them is a no-op.

The order is the order of communication intensity: `tensor` all-reduces activations inside every
block and sits innermost, on the fastest links; `sweep` never communicates and sits outermost. On
a multi-slice TPU job (`dcn_mesh`), each axis size is the product of its ICI size (inside a slice)
and its DCN size (across slices); put `data` or `sweep` on DCN.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

MESH_AXES = ("sweep", "data", "fsdp", "tensor")


def parse_mesh(spec: str | Mapping[str, int] | None,
               num_devices: int | None = None) -> dict[str, int]:
    """Parses "data:-1,fsdp:2" (or a dict) into sizes for every axis of `MESH_AXES`.

    Unnamed axes get size 1; None or "" means "data:-1". At most one axis may be -1; it is filled
    so that the sizes multiply to `num_devices` (required for -1). With `num_devices`, the
    product must equal it.
    """
    if spec is None or spec == "":
        spec = "data:-1"
    if isinstance(spec, str):
        sizes = {}
        for item in spec.replace(" ", "").split(","):
            if not item:
                continue
            name, sep, value = item.partition(":")
            if not sep:
                raise ValueError(f"mesh entry {item!r} must be 'axis:size', "
                                 "e.g. 'data:-1,tensor:2'")
            try:
                sizes[name] = int(value)
            except ValueError:
                raise ValueError(f"mesh entry {item!r}: size must be an integer") from None
    else:
        sizes = {str(k): int(v) for k, v in dict(spec).items()}
    unknown = sorted(set(sizes) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"unknown mesh axes {unknown}; valid axes: {', '.join(MESH_AXES)}")
    sizes = {axis: sizes.get(axis, 1) for axis in MESH_AXES}
    wild = [axis for axis, size in sizes.items() if size == -1]
    bad = [axis for axis, size in sizes.items() if size == 0 or size < -1]
    if bad or len(wild) > 1:
        raise ValueError(f"mesh {spec!r}: sizes must be positive, with at most one -1")
    known = math.prod(size for size in sizes.values() if size != -1)
    if wild:
        if num_devices is None:
            raise ValueError(f"mesh {spec!r} has a -1 axis; pass num_devices to fill it")
        if num_devices % known:
            raise ValueError(f"mesh {spec!r}: {num_devices} devices are not divisible by {known}")
        sizes[wild[0]] = num_devices // known
    elif num_devices is not None and known != num_devices:
        raise ValueError(f"mesh {spec!r} has {known} devices, but {num_devices} are available")
    return sizes


def format_mesh(sizes: Mapping[str, int]) -> str:
    """The inverse of `parse_mesh` for logs: "sweep:1,data:4,fsdp:2,tensor:1"."""
    return ",".join(f"{axis}:{sizes[axis]}" for axis in MESH_AXES)


def make_mesh(spec: str | Mapping[str, int] | None = "data:-1", *,
              dcn_mesh: str | Mapping[str, int] | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds the (sweep, data, fsdp, tensor) mesh over `devices` (default: all global devices).

    Args:
      spec: axis sizes inside one slice (ICI), e.g. "data:-1,fsdp:1,tensor:1"; -1 takes the rest.
      dcn_mesh: axis sizes across slices (multi-slice TPU; on GPUs, across hosts), e.g. "data:2";
        the mesh axis size is the ICI size times the DCN size. None or all-ones means one slice.
      devices: the devices to use; default `jax.devices()`.

    Axes are `AxisType.Auto`: shardings are propagated by the compiler from the in/out shardings
    and the logical constraints in the model (GSPMD), as the trainer's pure steps expect.
    """
    devices = list(jax.devices() if devices is None else devices)
    dcn = parse_mesh(dcn_mesh) if dcn_mesh else {axis: 1 for axis in MESH_AXES}
    num_slices = math.prod(dcn.values())
    if len(devices) % num_slices:
        raise ValueError(f"dcn_mesh {dcn_mesh!r} needs a multiple of {num_slices} devices, "
                         f"got {len(devices)}")
    ici = parse_mesh(spec, len(devices) // num_slices)
    shape = tuple(ici[axis] for axis in MESH_AXES)
    if num_slices > 1:
        dcn_shape = tuple(dcn[axis] for axis in MESH_AXES)
        # TPU slices carry slice_index; elsewhere (GPU hosts) each process is one DCN granule.
        device_array = mesh_utils.create_hybrid_device_mesh(
            shape, dcn_shape, devices, process_is_granule=not hasattr(devices[0], "slice_index"))
    else:
        device_array = mesh_utils.create_device_mesh(shape, devices)
    return Mesh(device_array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def sweep_mesh(num_runs: int, num_devices: int | None = None) -> str:
    """A mesh for a vmapped grid of `num_runs` runs: as many runs side by side as divide both the
    runs and the devices, the rest data parallel ("sweep:2,data:-1" for 6 runs on 8 devices)."""
    num_devices = jax.device_count() if num_devices is None else num_devices
    return f"sweep:{math.gcd(num_runs, num_devices)},data:-1"
