"""Small file I/O for local paths and bucket URLs (gs://, s3://, memory://) alike.

Local paths are written atomically (temporary file + rename), so a crash never leaves a half-written
result; URLs go through tensorstore's key-value stores, whose single-key writes are atomic.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any

_URL_SCHEMES = ("gs://", "s3://", "http://", "https://", "memory://", "file://")


def is_url(path: str) -> bool:
    return str(path).startswith(_URL_SCHEMES)


def kvstore_url(path: str, *, directory: bool = False) -> str:
    """A tensorstore KvStore URL for a local path or a URL; `directory` adds the trailing slash."""
    path = str(path)
    url = path if is_url(path) else "file://" + os.path.abspath(path)
    if directory and not url.endswith("/"):
        url += "/"
    return url


def join(base: str, *parts: str) -> str:
    base = str(base)
    if is_url(base):
        return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])
    return os.path.join(base, *parts)


def _split(path: str) -> tuple[str, str]:
    url = kvstore_url(path)
    parent, _, key = url.rpartition("/")
    return parent + "/", key


def _kvstore(directory_url: str):
    import tensorstore as ts  # noqa: PLC0415 - only remote paths need it

    return ts.KvStore.open(directory_url).result()


def exists(path: str) -> bool:
    if not is_url(path):
        return os.path.exists(path)
    parent, key = _split(path)
    return _kvstore(parent).read(key).result().state == "value"


def read_bytes(path: str) -> bytes:
    if not is_url(path):
        with open(path, "rb") as f:
            return f.read()
    parent, key = _split(path)
    result = _kvstore(parent).read(key).result()
    if result.state != "value":
        raise FileNotFoundError(f"{path} does not exist")
    return bytes(result.value)


def write_bytes(path: str, data: bytes) -> None:
    """Writes `data` to `path` atomically, creating local parent directories."""
    if is_url(path):
        parent, key = _split(path)
        _kvstore(parent).write(key, data).result()
        return
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 -> what open() would have given
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def read_json(path: str) -> Any:
    return json.loads(read_bytes(path).decode("utf-8"))


def write_json(path: str, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj):
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")
