"""Tokenizers for pretraining corpora: the built-in byte-level one and `tokenizers` JSON files.

A tokenizer maps text to int32 token ids and back. Documents in a token store are separated by the
tokenizer's end-of-document id, so every tokenizer has one.

`ByteTokenizer` needs nothing: UTF-8 bytes are ids 0..255 and 256 is the end-of-document id
(vocab_size 257). `JsonTokenizer` wraps any Hugging Face `tokenizers` JSON file; the package is
imported only when such a file is used, and is not a dependency of mad_jax.
"""
from __future__ import annotations

import json
from typing import Protocol

import numpy as np

from mad_jax import storage

BYTE = "byte"
_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "[SEP]", "<EOS>")


class Tokenizer(Protocol):
    """What the token store and the sweep need from a tokenizer."""

    name: str
    vocab_size: int
    eos_id: int

    def encode(self, text: str) -> np.ndarray:
        """Text -> int32 ids [T] (no end-of-document id appended)."""

    def decode(self, ids) -> str:
        """Ids [T] -> text; end-of-document ids are dropped."""


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, plus the end-of-document id 256.

    `decode(encode(s)) == s` for every Python string: lone surrogates go through the
    "surrogatepass" error handler instead of being replaced.
    """

    name = BYTE
    vocab_size = 257
    eos_id = 256

    def encode(self, text: str) -> np.ndarray:
        data = text.encode("utf-8", errors="surrogatepass")
        return np.frombuffer(data, dtype=np.uint8).astype(np.int32)

    def decode(self, ids) -> str:
        ids_T = np.asarray(ids).reshape(-1)
        if ids_T.size and (ids_T.min() < 0 or ids_T.max() > self.eos_id):
            raise ValueError(f"byte tokenizer ids must lie in [0, {self.eos_id}], "
                             f"got values in [{ids_T.min()}, {ids_T.max()}]")
        data = ids_T[ids_T != self.eos_id].astype(np.uint8).tobytes()
        return data.decode("utf-8", errors="surrogatepass")

    def to_json(self) -> str:
        return json.dumps({"type": BYTE})


def _import_tokenizers():
    try:
        import tokenizers  # noqa: PLC0415 - optional dependency, imported only when used
    except ImportError as err:
        raise ImportError(
            "a tokenizer JSON file needs the `tokenizers` package (pip install tokenizers), which "
            "mad_jax does not install; use the built-in byte tokenizer (tokenizer='byte') otherwise"
        ) from err
    return tokenizers


class JsonTokenizer:
    """A Hugging Face `tokenizers` tokenizer, from the text of its JSON file.

    Args:
      text: the JSON document (what `tokenizer.json` holds).
      name: a label for reports (usually the file name).
      eos_token: the end-of-document token; by default the first of the usual names
        (<|endoftext|>, </s>, <eos>, ...) that the vocabulary has.
    """

    def __init__(self, text: str, *, name: str = "json", eos_token: str | None = None):
        tokenizers = _import_tokenizers()
        self._tok = tokenizers.Tokenizer.from_str(text)
        self._text = text
        self.name = name
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        candidates = (eos_token,) if eos_token else _EOS_CANDIDATES
        ids = [self._tok.token_to_id(t) for t in candidates]
        found = [i for i in ids if i is not None]
        if not found:
            raise ValueError(f"tokenizer {name!r} has none of the end-of-document tokens "
                             f"{list(candidates)}; pass eos_token=")
        self.eos_id = int(found[0])

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int32)

    def decode(self, ids) -> str:
        ids_T = [int(i) for i in np.asarray(ids).reshape(-1) if int(i) != self.eos_id]
        return self._tok.decode(ids_T, skip_special_tokens=False)

    def to_json(self) -> str:
        return self._text


def load_tokenizer(spec: str) -> Tokenizer:
    """"byte" -> ByteTokenizer; a path (local, or a URL such as gs://...) -> JsonTokenizer."""
    if spec == BYTE:
        return ByteTokenizer()
    if not storage.exists(spec):
        raise FileNotFoundError(f"tokenizer {spec!r} is neither 'byte' nor an existing JSON file")
    return JsonTokenizer(storage.read_text(spec),
                         name=spec.rstrip("/").rsplit("/", 1)[-1])



def tokenizer_from_json(text: str, name: str = "json") -> Tokenizer:
    """Rebuilds a tokenizer from what `to_json()` wrote (how a token store keeps its tokenizer)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"stored tokenizer {name!r} is not valid JSON: {err}") from None
    if isinstance(data, dict) and data.get("type") == BYTE:
        return ByteTokenizer()
    return JsonTokenizer(text, name=name)
