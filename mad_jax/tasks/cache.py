"""`load`: a setting's train or test split, optionally through a cache (a local folder or a
bucket URL).

A cache entry is one .npz file named by a hash of (format version, task, resolved generation
parameters, split, seed, number of examples, and for the validation split the size of the test
split it is disjoint from). Entries are written atomically (`mad_jax.storage.write_bytes`: locally
a private temporary file, fsynced and os.replace'd onto the entry), so readers see either no entry
or a whole one, and two processes writing the same entry at once both succeed (the content is
identical; the last write wins). An entry that fails to load or does not match its key is
regenerated and rewritten.
"""
from __future__ import annotations

import io
import json
import os
import zipfile
from typing import Any, Mapping

import numpy as np

from mad_jax import storage
from mad_jax.tasks import grid, seeding, validation
from mad_jax.tasks.generation import generate
from mad_jax.tasks.registry import check_split, get_task, resolve_params

# Bump whenever generated data change, so that no entry of an older format is served.
# 2: fuzzy in-context recall as the reference (sequences of seq_len + 1 tokens, inputs of seq_len;
#    its probe placement); the validation split.
FORMAT_VERSION = 2


def _size(task: str, setting: Mapping[str, Any], key: str) -> int:
    return validation.non_negative_int(key, setting.get(key, grid.baseline(task)[key]))


def _num_examples(task: str, setting: Mapping[str, Any], split: str) -> int:
    if split == "train":
        return _size(task, setting, "num_train_examples")
    if split == "validation" and "num_validation_examples" in setting:
        return validation.non_negative_int("num_validation_examples",
                                           setting["num_validation_examples"])
    return _size(task, setting, "num_test_examples")


def _disjoint_from(task: str, setting: Mapping[str, Any], split: str) -> int | None:
    """The number of test rows the validation split avoids (None for train and test)."""
    return _size(task, setting, "num_test_examples") if split == "validation" else None


def cache_key(task: str, params: Mapping[str, Any], split: str, seed: int,
              num_examples: int, disjoint_from: int | None = None) -> str:
    """The file-name hash of a data set: 32 hex digits."""
    words = seeding.stable_hash_words(FORMAT_VERSION, task, dict(params), split, int(seed),
                                      int(num_examples), disjoint_from)
    return "".join(f"{w:08x}" for w in words)


def cache_path(cache_dir: str | os.PathLike, task: str, setting: Mapping[str, Any], split: str,
               seed: int) -> str:
    """Where `load` keeps this data set under `cache_dir`."""
    params = resolve_params(task, setting)
    key = cache_key(task, params, split, seed, _num_examples(task, setting, split),
                    _disjoint_from(task, setting, split))
    return storage.join(cache_dir, f"{task}-{split}-{key}.npz")


def _read(path: str, meta: str) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with np.load(io.BytesIO(storage.read_bytes(path)), allow_pickle=False) as data:
            if str(data["meta"]) != meta:
                return None
            return data["inputs"], data["targets"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # a damaged entry: regenerate it


def _write(path: str, inputs: np.ndarray, targets: np.ndarray, meta: str) -> None:
    buf = io.BytesIO()
    np.savez(buf, inputs=inputs, targets=targets, meta=np.array(meta))
    storage.write_bytes(path, buf.getvalue())


def load(task: str, setting: Mapping[str, Any], split: str, *, seed: int,
         cache_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The `split` data set of a setting: (inputs, targets), int32 [num_examples, length].

    split: "train", "validation" or "test". num_examples is setting["num_train_examples"] for
    "train", setting["num_test_examples"] for "test", and setting["num_validation_examples"] for
    "validation", else its num_test_examples (the task's baseline sizes where absent). The
    validation split is disjoint from the test split of num_test_examples rows (see `generate`).
    With cache_dir (a local folder or a URL such as gs://bucket/data), reads the data set from
    the cache or generates and writes it there.
    """
    get_task(task)
    check_split(split)
    seed = validation.non_negative_int("seed", seed)
    params = resolve_params(task, setting)
    num_examples = _num_examples(task, setting, split)
    disjoint_from = _disjoint_from(task, setting, split)
    # the setting's test size: the validation split is disjoint from that many test rows
    generate_kwargs = dict(params, num_examples=num_examples, seed=seed, split=split,
                           num_test_examples=_size(task, setting, "num_test_examples"))
    if cache_dir is None:
        return generate(task, **generate_kwargs)
    path = cache_path(cache_dir, task, setting, split, seed)
    meta = json.dumps({"format": FORMAT_VERSION, "task": task, "params": params, "split": split,
                       "seed": seed, "num_examples": num_examples,
                       "disjoint_from": disjoint_from}, sort_keys=True)
    cached = _read(path, meta)
    if cached is not None:
        return cached
    inputs, targets = generate(task, **generate_kwargs)
    _write(path, inputs, targets, meta)
    return inputs, targets
