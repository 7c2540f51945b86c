"""mad_jax.storage on a local folder and on the bucket stand-ins tensorstore's kvstore supports
(`memory://`, `file://`), and the tables and reports written through it."""
import json
import os
import stat
import uuid

import numpy as np
import pandas as pd
import pytest

from mad_jax import protocol, storage
from mad_jax.protocol import results_table
from mad_jax.scaling import isoflop


@pytest.fixture(params=["local", "file", "memory"])
def root(request, tmp_path):
    """A fresh folder: a local path, a file:// URL, or an in-memory store's URL."""
    if request.param == "local":
        return str(tmp_path / "w")
    if request.param == "file":
        return "file://" + str(tmp_path / "w")
    return f"memory://{uuid.uuid4().hex}/w"


def test_join_and_is_url():
    assert storage.join("memory://", "a", "b") == "memory://a/b"
    assert storage.join("gs://bucket/dir/", "/x/", "y") == "gs://bucket/dir/x/y"
    assert storage.join("rel", "a", "b") == os.path.join("rel", "a", "b")
    assert storage.is_url("gs://b/x") and storage.is_url("file:///tmp/x")
    assert not storage.is_url("/tmp/gs:/x") and not storage.is_url("workdir/mad")


def test_write_read_exists_remove(root):
    path = storage.join(root, "a", "b.txt")
    assert not storage.exists(path)
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(path)
    storage.write_text(path, "héllo\n")
    assert storage.exists(path) and storage.read_text(path) == "héllo\n"
    storage.write_bytes(path, b"\x00\x01")
    assert storage.read_bytes(path) == b"\x00\x01"
    storage.remove(path)
    assert not storage.exists(path)
    storage.remove(path)  # removing a missing file is no error


def test_json_sorted_with_numpy_values(root):
    path = storage.join(root, "r.json")
    storage.write_json(path, {"b": np.float32(0.5), "a": np.arange(3), "s": {2, 1}})
    assert storage.read_json(path) == {"a": [0, 1, 2], "b": 0.5, "s": [1, 2]}
    assert storage.read_text(path).startswith('{\n "a": [\n  0,')


def test_list_files_sorted_part_by_part_and_move(root):
    for name in ("copy-x/s/result.json", "copy/s2/result.json", "copy/s1/result.json", "top"):
        storage.write_text(storage.join(root, name), name)
    assert storage.list_files(root) == ["copy/s1/result.json", "copy/s2/result.json",
                                        "copy-x/s/result.json", "top"]
    assert storage.list_files(storage.join(root, "nowhere")) == []
    storage.move(storage.join(root, "top"), storage.join(root, "moved"))
    assert not storage.exists(storage.join(root, "top"))
    assert storage.read_text(storage.join(root, "moved")) == "top"


def test_csv_bytes_are_the_same_everywhere(root, tmp_path):
    frame = pd.DataFrame({"name": ["a", "b,c"], "x": [1.5, float("nan")], "n": [1, 2]})
    path = storage.join(root, "t.csv")
    storage.write_csv(path, frame)
    frame.to_csv(tmp_path / "reference.csv", index=False)
    assert storage.read_bytes(path) == (tmp_path / "reference.csv").read_bytes()
    pd.testing.assert_frame_equal(storage.read_csv(path), frame)


def test_append_file(root):
    path = storage.join(root, "logs", "x.jsonl")
    f = storage.AppendFile(path)
    f.write(b"1\n")
    f.flush()
    assert storage.read_bytes(path) == b"1\n"
    f.write(b"2\n")
    f.close()
    f.close()
    g = storage.AppendFile(path)  # appends to what is there
    g.write(b"3\n")
    g.close()
    assert storage.read_bytes(path) == b"1\n2\n3\n"
    storage.AppendFile(storage.join(root, "empty.log")).close()
    assert storage.read_bytes(storage.join(root, "empty.log")) == b""


def test_local_write_is_atomic_with_open_permissions(tmp_path):
    path = tmp_path / "d" / "results.csv"
    storage.write_text(path, "old")
    with pytest.raises(TypeError):
        storage.write_bytes(path, "not bytes")  # fails after the temporary file is made
    assert path.read_text() == "old"
    assert os.listdir(path.parent) == ["results.csv"]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask


def test_url_errors_are_one_line_oserrors():
    with pytest.raises(OSError, match=r"^bogus://x/y: .*unsupported URL scheme") as err:
        storage.write_text("bogus://x/y", "z")
    assert "\n" not in str(err.value)


# --- tables and reports through storage ---

def _mad_rows():
    rows = []
    for setting, key, value, lr, acc in (
            ("baseline", None, None, 1e-3, 0.9), ("baseline", None, None, 1e-4, 0.7),
            ("vocab_size=32", "vocab_size", 32, 1e-3, 0.6),
            ("vocab_size=64", "vocab_size", 64, 1e-3, 0.3)):
        rows.append(results_table.make_row(
            arch="a", preset="smoke", task="in-context-recall", setting=setting,
            difficulty_key=key, difficulty_value=value, learning_rate=lr, weight_decay=0.0,
            seed=0, status="ok", final_test_acc=acc, steps=4, params=100, wall_time_s=1.0,
            setting_params={"vocab_size": 16}, fingerprint="0123456789abcdef"))
    return results_table.upsert(results_table.empty(), rows)


def test_mad_results_table_on_a_url(root, tmp_path):
    table = _mad_rows()
    path = storage.join(root, results_table.RESULTS_FILE)
    assert results_table.read(path).empty  # no file yet: an empty table
    results_table.write(path, table)
    results_table.write(tmp_path / "local.csv", table)
    assert storage.read_bytes(path) == (tmp_path / "local.csv").read_bytes()
    pd.testing.assert_frame_equal(results_table.read(path),
                                  results_table.read(tmp_path / "local.csv"))
    rows = json.loads(table.to_json(orient="records"))
    storage.write_json(storage.join(root, "runs", "in-context-recall", "baseline",
                                    "result.json"), {"rows": rows[:2]})
    storage.write_json(storage.join(root, "runs", "compression", "baseline", "result.json"),
                       {"rows": rows[2:]})
    storage.write_text(storage.join(root, "runs", "compression", "x", "result.json"), "{")
    rebuilt = results_table.rows_from_result_files(storage.join(root, "runs"))
    assert rebuilt == rows[2:] + rows[:2]  # tasks in sorted order; a damaged file skipped


def test_mad_report_on_a_url(tmp_path):
    table = _mad_rows()
    url = f"memory://{uuid.uuid4().hex}/sweep"
    paths = protocol.write_report(url, table)
    local = protocol.write_report(str(tmp_path), table)
    assert paths["md"] == url + "/report.md"
    assert storage.read_text(paths["md"]) == (tmp_path / "report.md").read_text()
    assert storage.read_text(paths["html"]) == (tmp_path / "report.html").read_text()
    assert "plots/mad_scores.png" in storage.read_text(paths["md"])
    assert storage.list_files(url) == ["plots/difficulty_in-context-recall.png",
                                       "plots/mad_scores.png", "report.html", "report.md"]
    for name in ("scores_png", "difficulty_in-context-recall"):
        png = storage.read_bytes(paths[name])
        assert png.startswith(b"\x89PNG") and png == open(local[name], "rb").read()
    results_table.write(storage.join(url, results_table.RESULTS_FILE), table)
    again = protocol.write_report(url)  # the results read from the URL
    assert storage.read_text(again["md"]) == (tmp_path / "report.md").read_text()


def test_isoflop_results_table_on_a_url(root):
    rows = [{c: i for c in isoflop.RESULT_COLUMNS} for i in range(2)]
    path = storage.join(root, "results.csv")
    isoflop.write_results_csv(path, rows)
    assert isoflop.read_results_csv(path).to_dict("records") == rows
    with pytest.raises(FileNotFoundError, match="run the sweep first"):
        isoflop.read_results_csv(storage.join(root, "none.csv"))
