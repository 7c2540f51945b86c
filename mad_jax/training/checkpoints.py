"""Checkpoints with orbax: the (grid) train state plus a JSON record of everything else a
resumed run needs (data position, evaluation history, elapsed time, config fingerprint).

Orbax writes each step to a temporary folder and renames it when complete, so a process killed
mid-save leaves the previous checkpoint intact; the partial folder is cleaned up on the next start.
"""
from __future__ import annotations

import copy
import hashlib
import os
import shutil
import tempfile
from typing import Any

import jax
import orbax.checkpoint as ocp

from mad_jax import storage


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be restored; the message names its path."""


def local_checkpoint_dir(directory: str | os.PathLike) -> str:
    """`directory` itself when local; for a bucket URL, a local scratch folder named by its hash.

    Orbax reaches buckets only through gcsfs, which mad_jax does not install, so the checkpoints of
    a sweep whose workdir is a URL live on this machine: a process killed on the same machine
    resumes from them; elsewhere, an unfinished setting restarts (finished ones are in results).
    """
    directory = os.fspath(directory)
    if not storage.is_url(directory):
        return directory
    digest = hashlib.sha256(directory.encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), "mad_jax-checkpoints", digest)


class Checkpointer:
    """Saves and restores `(state, meta)` under `directory/<step>/{state,meta}` (a local folder)."""

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 1,
                 async_save: bool = True):
        if storage.is_url(directory):
            raise ValueError(f"checkpoints need a local folder, got {directory}: orbax reaches "
                             "buckets only through gcsfs, which mad_jax does not install; pass "
                             "training.local_checkpoint_dir(directory)")
        self.directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Starts saving (asynchronously: device arrays are copied before this returns).

        `meta` is deep-copied here: the JSON is written in the background, and the caller keeps
        appending to its history lists while that write is under way.
        """
        self._manager.save(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(copy.deepcopy(meta))))

    def read_meta(self, step: int | None = None) -> dict:
        """The JSON record of the latest (or given) step alone (cheap: no arrays are read)."""
        step = self.latest_step() if step is None else step
        path = os.path.join(self.directory, str(step))
        try:
            return self._manager.restore(step, args=ocp.args.Composite(
                meta=ocp.args.JsonRestore())).meta
        except Exception as e:
            first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise CheckpointError(f"corrupt checkpoint {path}: {type(e).__name__}: "
                                  f"{first_line[:300]}") from e

    def restore(self, like_state: Any, step: int | None = None) -> tuple[Any, dict, int]:
        """Restores the latest (or given) step into the structure of `like_state`.

        Returns (state, meta, step). Raises CheckpointError naming the checkpoint folder (and the
        file, when the underlying error names one) if it cannot be read.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        path = os.path.join(self.directory, str(step))
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like_state)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
            state, meta = restored.state, restored.meta
            if not isinstance(meta, dict) or meta.get("step") != step:
                raise ValueError(f"metadata step {getattr(meta, 'get', lambda _: None)('step')} "
                                 f"!= {step}")
            if jax.tree_util.tree_structure(state) != jax.tree_util.tree_structure(like_state):
                raise ValueError("restored state has a different structure")
        except Exception as e:  # orbax/tensorstore raise many types for damaged files
            first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise CheckpointError(f"corrupt checkpoint {path}: {type(e).__name__}: "
                                  f"{first_line[:300]}") from e
        return state, meta, step

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def delete_all(self) -> None:
        """Removes every checkpoint (after a finished run, or a corrupt one)."""
        try:
            self.close()
        except Exception:  # a corrupt folder may fail to close cleanly; it is deleted anyway
            pass
        shutil.rmtree(self.directory, ignore_errors=True)
