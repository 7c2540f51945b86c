"""Random token windows from a token store, as a grain pipeline.

Record i of a `WindowSource` is the window of `seq_len + 1` tokens starting at
`hash(seed, i) mod (num_tokens - seq_len)` (a splitmix64 hash): random access, no state, the same
windows on every machine for the same seed. `train_batches` takes every `shard_count`-th record
from `shard_index` on and batches them, so the union of the hosts' k-th batches is records
[k*B, (k+1)*B) whatever the number of hosts, and its iterator's position (`get_state()` /
`set_state()`) is a checkpointable JSON dict.
"""
from __future__ import annotations

import numpy as np

from mad_jax.scaling.token_store import TokenStore

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x_N: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a bijective 64-bit mix (uint64 in, uint64 out)."""
    with np.errstate(over="ignore"):
        z = x_N + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def window_starts(indices, *, seed: int, num_tokens: int, window: int) -> np.ndarray:
    """Start offsets (int64) of records `indices`: uniform over [0, num_tokens - window]."""
    if num_tokens < window:
        raise ValueError(f"a window of {window} tokens does not fit in {num_tokens} tokens")
    idx_N = np.asarray(indices, dtype=np.uint64).reshape(-1)
    seed_mix = _splitmix64(np.asarray([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    h_N = _splitmix64(idx_N ^ seed_mix)
    return (h_N % np.uint64(num_tokens - window + 1)).astype(np.int64)


class WindowSource:
    """A grain random-access source of `num_windows` token windows [seq_len + 1] (int32).

    Args:
      tokens: a TokenStore or an in-memory 1-D array of ids.
      split: which split of the store ("train" or "validation").
      seq_len: model input length L; a window holds L + 1 tokens (inputs and shifted targets).
      num_windows: how many records the source has (e.g. steps x global batch).
      seed: picks the windows.
      in_memory: read the whole split into memory first (default: when it is under 512 MB).
    """

    def __init__(self, tokens: TokenStore | np.ndarray, *, seq_len: int, num_windows: int,
                 seed: int, split: str = "train", in_memory: bool | None = None):
        if seq_len < 1 or num_windows < 1:
            raise ValueError(f"seq_len and num_windows must be >= 1, got {seq_len}, {num_windows}")
        self._store = tokens if isinstance(tokens, TokenStore) else None
        self._split = split
        if self._store is None:
            self._array = np.asarray(tokens, dtype=np.int32).reshape(-1)
            num_tokens = self._array.size
        else:
            num_tokens = self._store.num_tokens(split)
            itemsize = 2 if self._store.meta["dtype"] == "uint16" else 4
            if in_memory is None:
                in_memory = num_tokens * itemsize <= 512 << 20
            self._array = self._store.load(split) if in_memory else None
        if num_tokens < seq_len + 1:
            raise ValueError(f"split {split!r} has {num_tokens} tokens, fewer than one window of "
                             f"seq_len + 1 = {seq_len + 1}; use a larger corpus or a shorter "
                             "seq_len")
        self.num_tokens = num_tokens
        self.seq_len = seq_len
        self.num_windows = num_windows
        self.seed = seed

    def __len__(self) -> int:
        return self.num_windows

    def start(self, index: int) -> int:
        return int(window_starts([index], seed=self.seed, num_tokens=self.num_tokens,
                                 window=self.seq_len + 1)[0])

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < self.num_windows:
            raise IndexError(f"window {index} out of range [0, {self.num_windows})")
        start = self.start(index)
        stop = start + self.seq_len + 1
        if self._array is not None:
            return self._array[start:stop].copy()
        return self._store.read(self._split, start, stop)

    def __repr__(self) -> str:
        return (f"WindowSource(split={self._split!r}, seq_len={self.seq_len}, "
                f"num_windows={self.num_windows}, seed={self.seed})")


def train_batches(tokens: TokenStore | np.ndarray, *, seq_len: int, global_batch: int,
                  num_steps: int, seed: int, shard_index: int | None = None,
                  shard_count: int | None = None, num_threads: int = 4, prefetch: int = 64,
                  in_memory: bool | None = None):
    """A grain iterator over this host's batches [global_batch / shard_count, seq_len + 1] (int32).

    `shard_index` / `shard_count` default to `jax.process_index()` / `jax.process_count()`.
    The iterator's `get_state()` is its position; `set_state(state)` on a fresh one resumes there.
    """
    import grain  # noqa: PLC0415

    if shard_index is None or shard_count is None:
        import jax  # noqa: PLC0415

        shard_index, shard_count = jax.process_index(), jax.process_count()
    if global_batch % shard_count:
        raise ValueError(f"global batch {global_batch} is not divisible by the {shard_count} "
                         "data shards")
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} out of range for {shard_count} shards")
    source = WindowSource(tokens, seq_len=seq_len, num_windows=num_steps * global_batch, seed=seed,
                          in_memory=in_memory)
    dataset = grain.MapDataset.source(source)[shard_index::shard_count]
    dataset = dataset.batch(global_batch // shard_count, drop_remainder=True)
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
    return iter(dataset.to_iter_dataset(options))


def eval_windows(tokens: TokenStore | np.ndarray, *, seq_len: int, num_windows: int,
                 split: str = "validation") -> np.ndarray:
    """A fixed evaluation set [num_windows, seq_len + 1]: windows evenly spaced over the split.

    No seed: every run in a sweep is scored on the same tokens.
    """
    if isinstance(tokens, TokenStore):
        array = tokens.load(split)
    else:
        array = np.asarray(tokens, np.int32).reshape(-1)
    window = seq_len + 1
    if array.size < window:
        raise ValueError(f"split {split!r} has {array.size} tokens, fewer than one window of "
                         f"{window}")

    starts = np.linspace(0, array.size - window, num_windows).round().astype(np.int64)
    return np.stack([array[s:s + window] for s in starts])
