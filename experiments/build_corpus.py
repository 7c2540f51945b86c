"""Tokenizes text files into a token store (tensorstore zarr3, local directory or gs:// bucket).

    python -m experiments.build_corpus --output=workdir/scaling/cpu/corpus   # the Python stdlib
    python -m experiments.build_corpus --inputs=data/*.txt,docs/ --output=gs://bucket/corpus \
        --tokenizer=tokenizer.json --validation_fraction=0.01

Every file is one document; a seeded hash of its name puts it in the train or validation split.
Errors print one line and exit with status 1.
"""
from __future__ import annotations

import sys

from absl import app, flags

_INPUTS = flags.DEFINE_string("inputs", "stdlib",
                              "comma-separated files, directories, globs, or 'stdlib'")
_OUTPUT = flags.DEFINE_string("output", None, "token store path (directory or gs://bucket/path)")
_TOKENIZER = flags.DEFINE_string("tokenizer", "byte", "'byte' or a `tokenizers` JSON file")
_VALIDATION = flags.DEFINE_float("validation_fraction", 0.05, "share of documents held out")
_MAX_BYTES = flags.DEFINE_integer("max_bytes", 0, "stop after this many bytes of text (0: all)")
_SEED = flags.DEFINE_integer("seed", 0, "seed of the train/validation split and max_bytes sample")

_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace an existing store")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        print(f"error: unexpected arguments: {' '.join(argv[1:])}", file=sys.stderr)
        sys.exit(2)
    if not _OUTPUT.value:
        print("error: --output is required (a directory or gs://bucket/path)", file=sys.stderr)
        sys.exit(2)
    from mad_jax.scaling.corpus import build_corpus

    try:
        build_corpus(_OUTPUT.value, _INPUTS.value, tokenizer=_TOKENIZER.value,
                     validation_fraction=_VALIDATION.value, max_bytes=_MAX_BYTES.value or None,
                     seed=_SEED.value, overwrite=_OVERWRITE.value)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
