"""A token store: tokenized text as 1-D tensorstore zarr3 arrays on local disk or in a bucket.

Layout under the store's path (a local directory or a URL such as gs://bucket/corpus):

    meta.json         tokenizer name, vocab size, dtype, tokens and documents per split
    tokenizer.json    the tokenizer itself (`Tokenizer.to_json()`), so the store is self-contained
    train/            zarr3 array [num_tokens] of uint16 (uint32 for vocabularies over 65,536)
    validation/       the same for held-out documents

Documents are concatenated, each followed by the tokenizer's end-of-document id. `meta.json` is
written last: a store without it is incomplete and does not open.
"""
from __future__ import annotations

import time
from typing import Iterable

import numpy as np

from mad_jax import storage
from mad_jax.scaling.tokenizer import Tokenizer, tokenizer_from_json

SPLITS = ("train", "validation")
META = "meta.json"
TOKENIZER = "tokenizer.json"
FORMAT_VERSION = 1
CHUNK_TOKENS = 1 << 18


def _dtype_for(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def _array_spec(path: str, split: str, dtype: str | None = None, chunk: int = CHUNK_TOKENS) -> dict:
    kvstore = storage.kvstore_url(storage.join(path, split), directory=True)
    spec = {"driver": "zarr3", "kvstore": kvstore}
    if dtype is not None:
        spec["metadata"] = {
            "shape": [0], "data_type": dtype,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [chunk]}},
            "codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                       {"name": "zstd", "configuration": {"level": 3}}]}
    return spec


def _context(cache_bytes: int):
    import tensorstore as ts  # noqa: PLC0415

    # A child of storage's context: a memory:// store is the one storage's files are in.
    return ts.Context({"cache_pool": {"total_bytes_limit": int(cache_bytes)}},
                      parent=storage.context())


class TokenStore:
    """Read access to a built token store.

    Use `TokenStore.open(path)`. `read(split, start, stop)` returns int32 ids; `load(split)` reads a
    whole split into memory (what small corpora do for speed).
    """

    def __init__(self, path: str, meta: dict, arrays: dict, tokenizer: Tokenizer):
        self.path = path
        self.meta = meta
        self._arrays = arrays
        self.tokenizer = tokenizer

    @classmethod
    def open(cls, path: str, *, cache_bytes: int = 256 << 20) -> "TokenStore":
        """Opens the store at `path`; FileNotFoundError (one line, with the fix) if missing."""
        import tensorstore as ts  # noqa: PLC0415

        meta_path = storage.join(path, META)
        if not storage.exists(meta_path):
            raise FileNotFoundError(
                f"no token store at {path} ({META} missing); build one with "
                f"`python -m experiments.build_corpus --output={path}`")
        meta = storage.read_json(meta_path)
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"token store {path} has format {meta.get('format_version')}, "
                             f"this code reads format {FORMAT_VERSION}; rebuild it")
        context = _context(cache_bytes)
        arrays = {split: ts.open(_array_spec(path, split), open=True, read=True,
                                 context=context).result()
                  for split in SPLITS}
        stored = storage.read_text(storage.join(path, TOKENIZER))
        tokenizer = tokenizer_from_json(stored, name=meta["tokenizer"])
        return cls(path, meta, arrays, tokenizer)

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    def num_tokens(self, split: str = "train") -> int:
        return int(self._arrays[self._split(split)].shape[0])

    def read(self, split: str, start: int, stop: int) -> np.ndarray:
        """Token ids [stop - start] (int32) of `split` from `start` (inclusive) to `stop`."""
        array = self._arrays[self._split(split)]
        if not 0 <= start <= stop <= array.shape[0]:
            raise IndexError(f"tokens [{start}, {stop}) out of range for split {split!r} "
                             f"of {array.shape[0]} tokens")
        return np.asarray(array[start:stop].read().result(), dtype=np.int32)

    def load(self, split: str = "train") -> np.ndarray:
        """The whole split as int32 ids [num_tokens] in memory."""
        return self.read(split, 0, self.num_tokens(split))

    def _split(self, split: str) -> str:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        return split

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={self.num_tokens(s):,}" for s in SPLITS)
        return f"TokenStore({self.path!r}, tokenizer={self.meta['tokenizer']!r}, {sizes} tokens)"


class TokenStoreWriter:
    """Appends tokenized documents to a new token store; `close()` (or a `with` block) seals it.

    Args:
      path: a local directory or a URL (gs://bucket/dir).
      tokenizer: the tokenizer whose ids are written; it is stored with the tokens.
      overwrite: replace an existing store (otherwise FileExistsError).
      buffer_tokens: tokens buffered per split before a write.
    """

    def __init__(self, path: str, tokenizer: Tokenizer, *, overwrite: bool = False,
                 buffer_tokens: int = 4 * CHUNK_TOKENS):
        import tensorstore as ts  # noqa: PLC0415

        if storage.exists(storage.join(path, META)) and not overwrite:
            raise FileExistsError(f"token store {path} already exists; pass overwrite=True "
                                  "(--overwrite) to rebuild it")
        self.path = path
        self.tokenizer = tokenizer
        self._dtype = _dtype_for(tokenizer.vocab_size)
        self._buffer_tokens = buffer_tokens
        context = _context(64 << 20)
        self._arrays = {split: ts.open(_array_spec(path, split, self._dtype), create=True,
                                       delete_existing=True, context=context).result()
                        for split in SPLITS}
        self._buffers: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
        self._buffered = dict.fromkeys(SPLITS, 0)
        self._written = dict.fromkeys(SPLITS, 0)
        self._documents = dict.fromkeys(SPLITS, 0)
        self._closed = False
        storage.write_text(storage.join(path, TOKENIZER), tokenizer.to_json())

    def add_document(self, ids: Iterable[int], split: str = "train") -> None:
        """Appends one document's ids and the end-of-document id to `split`."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        ids_T = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids_T.size and (ids_T.min() < 0 or ids_T.max() >= self.tokenizer.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.tokenizer.vocab_size}), "
                             f"got [{ids_T.min()}, {ids_T.max()}]")
        doc_T = np.append(ids_T, self.tokenizer.eos_id).astype(self._dtype)
        self._buffers[split].append(doc_T)
        self._buffered[split] += doc_T.size
        self._documents[split] += 1
        if self._buffered[split] >= self._buffer_tokens:
            self._flush(split)

    def add_text(self, text: str, split: str = "train") -> None:
        self.add_document(self.tokenizer.encode(text), split)

    def _flush(self, split: str) -> None:
        if not self._buffers[split]:
            return
        block = np.concatenate(self._buffers[split])
        start, stop = self._written[split], self._written[split] + block.size
        array = self._arrays[split].resize(exclusive_max=[stop], expand_only=True).result()
        array[start:stop].write(block).result()
        self._arrays[split] = array
        self._written[split] = stop
        self._buffers[split], self._buffered[split] = [], 0

    def close(self) -> dict:
        """Writes the remaining tokens and meta.json; returns the metadata."""
        if self._closed:
            raise RuntimeError(f"token store writer for {self.path} is already closed")
        for split in SPLITS:
            self._flush(split)
        meta = {"format_version": FORMAT_VERSION, "tokenizer": self.tokenizer.name,
                "vocab_size": int(self.tokenizer.vocab_size), "eos_id": int(self.tokenizer.eos_id),
                "dtype": self._dtype, "num_tokens": dict(self._written),
                "num_documents": dict(self._documents),

                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        storage.write_json(storage.join(self.path, META), meta)
        self._closed = True
        return meta

    def __enter__(self) -> "TokenStoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
