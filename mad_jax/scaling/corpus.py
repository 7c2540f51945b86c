"""Building a token store from text files (what `python -m experiments.build_corpus` runs).

Every input file is one document. A file goes to the validation split when a hash of its name and
the seed falls below `validation_fraction`, so the split is the same on any machine and does not
depend on the order files are listed in. `"stdlib"` names the Python standard library's own .py
sources (tests excluded): a few MB of text that every machine running mad_jax already has.
"""
from __future__ import annotations

import glob
import hashlib
import os
import sysconfig
import time
from typing import Callable, Sequence

from mad_jax.scaling.token_store import TokenStoreWriter
from mad_jax.scaling.tokenizer import load_tokenizer

STDLIB = "stdlib"
TEXT_SUFFIXES = (".py", ".txt", ".md", ".rst")
_STDLIB_SKIP = ("test", "tests", "idlelib", "lib2to3", "site-packages", "__pycache__")


def stdlib_sources() -> list[str]:
    """The .py files of the running Python's standard library, without its test suites."""
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _STDLIB_SKIP)
        files.extend(os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py"))
    return files


def resolve_inputs(inputs: str | Sequence[str],
                   suffixes: Sequence[str] = TEXT_SUFFIXES) -> list[str]:
    """Expands "stdlib", directories (recursively, files with `suffixes`), globs and file names.

    `inputs` is a list or a comma-separated string. Raises FileNotFoundError naming an input that
    matches nothing.
    """
    if isinstance(inputs, str):
        inputs = [s.strip() for s in inputs.split(",") if s.strip()]
    files: list[str] = []
    for item in inputs:
        if item == STDLIB:
            found = stdlib_sources()
        elif os.path.isdir(item):
            found = sorted(os.path.join(d, f) for d, _, fs in os.walk(item) for f in fs
                           if f.endswith(tuple(suffixes)))
        elif os.path.isfile(item):
            found = [item]
        else:
            found = sorted(f for f in glob.glob(item, recursive=True) if os.path.isfile(f))
        if not found:
            raise FileNotFoundError(f"corpus input {item!r} matches no text files")
        files.extend(found)
    return list(dict.fromkeys(os.path.abspath(f) for f in files))


def _unit_hash(name: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2.0**64


def build_corpus(output: str, inputs: str | Sequence[str] = STDLIB, *, tokenizer: str = "byte",
                 validation_fraction: float = 0.05, max_bytes: int | None = None, seed: int = 0,
                 overwrite: bool = False, log: Callable[[str], None] | None = print) -> dict:
    """Tokenizes text files into a token store at `output` and returns its metadata.

    Args:
      output: store path (local directory or gs://bucket/dir).
      inputs: files, directories, globs, or "stdlib" (list or comma-separated string).
      tokenizer: "byte" or the path of a `tokenizers` JSON file.
      validation_fraction: expected share of documents held out (at least one document is).
      max_bytes: stop adding documents once this many bytes of text are in (a hash-ordered
        subset, so the cap takes a random sample of the inputs, not the first names).
      seed: changes the train/validation split and the sampled subset.
      overwrite: replace an existing store.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    files = resolve_inputs(inputs)
    if len(files) < 2:
        raise ValueError(f"a corpus needs at least 2 documents (one per split), got {len(files)}")
    common = os.path.commonpath(files) if len(files) > 1 else os.path.dirname(files[0])
    names = {f: os.path.relpath(f, common) for f in files}
    order = sorted(files, key=lambda f: _unit_hash(names[f], seed))
    if max_bytes is not None:
        kept, total = [], 0
        for f in order:
            if total >= max_bytes:
                break
            kept.append(f)
            total += os.path.getsize(f)
        order = kept if len(kept) >= 2 else order[:2]
    validation = {f for f in order if _unit_hash("split:" + names[f], seed) < validation_fraction}
    if not validation:
        validation = {min(order, key=lambda f: _unit_hash("split:" + names[f], seed))}
    if len(validation) == len(order):
        validation.discard(order[0])
    tok = load_tokenizer(tokenizer)
    start = time.time()
    num_bytes = 0
    writer = TokenStoreWriter(output, tok, overwrite=overwrite)
    for i, f in enumerate(order):
        with open(f, "rb") as fh:
            data = fh.read()
        num_bytes += len(data)
        split = "validation" if f in validation else "train"
        writer.add_text(data.decode("utf-8", errors="replace"), split)
        if log and (i + 1) % 200 == 0:
            log(f"build_corpus: {i + 1}/{len(order)} files, {num_bytes / 1e6:.1f} MB")
    meta = writer.close()
    if log:
        log(f"build_corpus: {output}: {len(order)} files ({num_bytes / 1e6:.1f} MB) -> "
            f"train {meta['num_tokens']['train']:,} / validation "
            f"{meta['num_tokens']['validation']:,} tokens ({tok.name}) "
            f"in {time.time() - start:.1f}s")


    return meta
