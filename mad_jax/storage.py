"""Files on a local path or a bucket URL alike: atomic writes, reads, listings, CSV tables.

    storage.write_json(storage.join(workdir, "protocol.json"), record)  # /tmp/w or gs://b/w
    table = storage.read_csv(storage.join(workdir, "results.csv"))

A path is either local (`/tmp/w`, `workdir/mad`, a `pathlib.Path`) or a URL (`gs://`, `s3://`,
`memory://`, `file://`, any `scheme://`). Local paths use the os module: a write goes to a
temporary file in the target's folder (fsynced, given the permissions `open()` would) and is
`os.replace`d onto it, so readers see the old file or the new one, never half. URLs go through
tensorstore's key-value stores, whose single-key writes are atomic too (a bucket object is
replaced whole; the `file` driver writes a temporary file and renames it).

Why tensorstore's kvstore and not `etils.epath`: tensorstore is already a pinned dependency (the
token store and orbax stand on it) and speaks gs://, s3://, file:// and an in-memory store natively,
while epath reaches buckets only through gcsfs or tensorflow, which mad_jax does not install,
and has no in-memory store for tests. All tensorstore calls share one `context()`, so a
`memory://` store lives as long as the process and bucket connections are reused.

Object stores have no folders: `exists` and `read_*` take files; a write needs no parent folder.
Objects cannot be appended to either, so an `AppendFile` on a URL keeps the file's content in
memory and writes it whole on each `flush`.
"""
from __future__ import annotations

import functools
import io
import json
import os
import re
import tempfile
from typing import Any

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _read_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


# Read once, at import: setting it back and forth on every write would briefly leave it at 0 for
# files other threads (orbax's background saves) create meanwhile.
_UMASK = _read_umask()


def is_url(path: str | os.PathLike) -> bool:
    """Whether `path` is a URL (`scheme://...`) rather than a local path."""
    return bool(_URL.match(os.fspath(path)))


def join(base: str | os.PathLike, *parts: str) -> str:
    """`base/part/...`: `os.path.join` for local paths, "/" joins for URLs."""
    base = os.fspath(base)
    if not is_url(base):
        return os.path.join(base, *parts)
    stripped = [p.strip("/") for p in parts]
    return (base if base.endswith("/") else base + "/") + "/".join(p for p in stripped if p)


def kvstore_url(path: str | os.PathLike, *, directory: bool = False) -> str:
    """A tensorstore KvStore URL for a local path (`file://` + absolute path) or a URL;
    `directory` adds the trailing slash."""
    path = os.fspath(path)
    url = path if is_url(path) else "file://" + os.path.abspath(path)
    return url + "/" if directory and not url.endswith("/") else url


@functools.cache
def context():
    """The tensorstore Context every storage call uses; pass it (or a child:
    `ts.Context(spec, parent=storage.context())`) to `ts.open` so that arrays share the
    `memory://` stores and bucket connections of these files."""
    import tensorstore as ts  # noqa: PLC0415 - only URLs need it

    return ts.Context()


def _kvstore(path: str) -> tuple[Any, str]:
    """(KvStore of the folder of `path`, key of the file in it)."""
    import tensorstore as ts  # noqa: PLC0415

    parent, _, key = kvstore_url(path).rpartition("/")
    return _kv(lambda: ts.KvStore.open(parent + "/", context=context()).result(), path), key


def _kv(call, path: str):
    """Runs a tensorstore call; its errors (ValueError with a status line) become OSError,
    as a local path's would."""
    try:
        return call()
    except ValueError as e:
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise OSError(f"{path}: {first_line}") from e


def exists(path: str | os.PathLike) -> bool:
    """Whether the file exists (locally: a file or a folder)."""
    path = os.fspath(path)
    if not is_url(path):
        return os.path.exists(path)
    store, key = _kvstore(path)
    # an empty byte range: asks whether the object is there without downloading it
    return _kv(lambda: store.read(key, byte_range=slice(0, 0)).result(), path).state == "value"


def read_bytes(path: str | os.PathLike) -> bytes:
    """The file's content; FileNotFoundError if there is none."""
    path = os.fspath(path)
    if not is_url(path):
        with open(path, "rb") as f:
            return f.read()
    store, key = _kvstore(path)
    result = _kv(lambda: store.read(key).result(), path)
    if result.state != "value":
        raise FileNotFoundError(f"{path} does not exist")
    return bytes(result.value)


def read_text(path: str | os.PathLike) -> str:
    return read_bytes(path).decode("utf-8")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(read_bytes(path))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` atomically (creating local parent folders)."""
    path = os.fspath(path)
    if is_url(path):
        store, key = _kvstore(path)
        _kv(lambda: store.write(key, data).result(), path)
        return
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 -> what open() would have given
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def json_default(obj):
    """`json.dumps(default=...)` for what results hold besides JSON types: numpy scalars and
    arrays, sets."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Writes `obj` as JSON (sorted keys, indent 1, numpy values as numbers) atomically."""
    write_text(path, json.dumps(obj, indent=1, sort_keys=True, default=json_default) + "\n")


def read_csv(path: str | os.PathLike, **read_csv_kwargs):
    """A CSV file as a pandas DataFrame (`pandas.read_csv` keyword arguments pass through)."""
    import pandas as pd  # noqa: PLC0415

    return pd.read_csv(io.BytesIO(read_bytes(path)), **read_csv_kwargs)


def write_csv(path: str | os.PathLike, frame) -> None:
    """Writes a DataFrame as CSV without its index, atomically."""
    write_text(path, frame.to_csv(index=False))


def remove(path: str | os.PathLike) -> None:
    """Deletes the file if it exists."""
    path = os.fspath(path)
    if not is_url(path):
        if os.path.exists(path):
            os.remove(path)
        return
    store, key = _kvstore(path)
    _kv(lambda: store.write(key, None).result(), path)


def move(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Renames a file (`os.replace` locally; copy then delete between URLs)."""
    source, target = os.fspath(source), os.fspath(target)
    if not is_url(source) and not is_url(target):
        os.replace(source, target)
        return
    write_bytes(target, read_bytes(source))
    remove(source)


def list_files(folder: str | os.PathLike) -> list[str]:
    """Paths relative to `folder` ("a/b/c.json") of every file beneath it, sorted part by part
    (as nested sorted listings would give them); [] if there is none."""
    folder = os.fspath(folder)
    if not is_url(folder):
        found = [os.path.relpath(os.path.join(d, f), folder).replace(os.sep, "/")
                 for d, _, files in os.walk(folder) for f in files]
    else:
        import tensorstore as ts  # noqa: PLC0415

        url = kvstore_url(folder, directory=True)
        store = _kv(lambda: ts.KvStore.open(url, context=context()).result(), folder)
        found = [k.decode("utf-8") for k in _kv(lambda: store.list().result(), folder)]
    return sorted(found, key=lambda name: name.split("/"))


class AppendFile:
    """A file written by appending (logs), created if missing: `write(data)`, `flush()`, `close()`.

    Locally the file is opened in append mode. A URL's object cannot be appended to, so its
    content (what was there before, and every write since) is kept in memory and written whole
    by `flush` and `close`.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.closed = False
        self._local = self._content = None
        if not is_url(self.path):
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            self._local = open(self.path, "ab")
            return
        existed = exists(self.path)
        self._content = bytearray(read_bytes(self.path) if existed else b"")
        self._dirty = not existed  # the first flush creates the object

    def write(self, data: bytes) -> None:
        if self._local is not None:
            self._local.write(data)
        else:
            self._content += data
            self._dirty = True

    def flush(self) -> None:
        if self._local is not None:
            self._local.flush()
        elif self._dirty:
            write_bytes(self.path, bytes(self._content))
            self._dirty = False

    def close(self) -> None:
        if self.closed:
            return
        self.flush()
        if self._local is not None:
            self._local.close()
        self.closed = True
