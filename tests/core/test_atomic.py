"""Atomic writes (sr2lora.core.atomic): the target holds the old content or the new, never part of either."""

from __future__ import annotations

import json
import math
import os
import stat

import numpy as np
import pytest

from sr2lora.core.atomic import (
    atomic_open,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)


class Boom(Exception):
    pass


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_new_content_replaces_old(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    atomic_write_bytes(target, b"new content")
    assert target.read_bytes() == b"new content"
    assert _names(tmp_path) == ["a.bin"]


@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt])
def test_writer_failing_midway_keeps_old_content(tmp_path, exc):
    target = tmp_path / "metrics.csv"
    target.write_text("old,content\n", encoding="utf-8")
    with pytest.raises(exc):
        with atomic_open(target, "w", newline="") as fh:
            fh.write("new,")
            fh.flush()  # half of the new content is on disk, in the temp file
            raise exc()
    assert target.read_text(encoding="utf-8") == "old,content\n"
    assert _names(tmp_path) == ["metrics.csv"]  # no temp file left behind


def test_path_writer_failing_midway(tmp_path):
    target = tmp_path / "weights.safetensors"
    with pytest.raises(Boom):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise Boom()
    assert not target.exists() and _names(tmp_path) == []  # an absent target stays absent
    target.write_bytes(b"old")
    with pytest.raises(Boom):
        with atomic_path(target) as tmp:
            tmp.unlink()  # a writer may also remove and recreate its file
            raise Boom()
    assert target.read_bytes() == b"old" and _names(tmp_path) == ["weights.safetensors"]


def test_temp_file_keeps_suffix_for_writers_that_read_it(tmp_path):
    target = tmp_path / "images.npy"
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".npy" and tmp.name.startswith(".images.npy.tmp-")
        np.save(tmp, arr)  # numpy would append .npy to a name without it
    assert np.array_equal(np.load(target), arr)
    assert _names(tmp_path) == ["images.npy"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_permissions_are_those_of_a_plain_open(tmp_path, umask):
    old = os.umask(umask)
    try:
        with open(tmp_path / "plain.txt", "w", encoding="utf-8") as fh:
            fh.write("x")
        atomic_write_text(tmp_path / "atomic.txt", "x")
        with atomic_path(tmp_path / "viapath.bin") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    plain = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert plain == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "atomic.txt").stat().st_mode) == plain
    assert stat.S_IMODE((tmp_path / "viapath.bin").stat().st_mode) == plain


def test_text_encoding_and_newlines(tmp_path):
    text = "λ = 10⁻⁸ — Ā\nline two\r\nend\n"
    atomic_write_text(tmp_path / "u.md", text)
    assert (tmp_path / "u.md").read_bytes() == text.encode("utf-8")  # UTF-8, newlines as given
    atomic_write_text(tmp_path / "l.txt", "é\n", encoding="latin-1")
    assert (tmp_path / "l.txt").read_bytes() == b"\xe9\n"


def test_the_one_json_writer(tmp_path):
    data = {"a": [1, 2.5, None], "b": {"ü": "x"}}
    atomic_write_json(tmp_path / "d.json", data)
    assert (tmp_path / "d.json").read_text(encoding="utf-8") == json.dumps(data, indent=2)
    (tmp_path / "d.json").write_text("{}", encoding="utf-8")
    with pytest.raises(TypeError):  # not JSON at all: nothing is written, the old file stays
        atomic_write_json(tmp_path / "d.json", {"x": {1, 2}})
    assert (tmp_path / "d.json").read_text(encoding="utf-8") == "{}" and _names(tmp_path) == ["d.json"]
    # NaN/inf are not JSON: written as null (an undefined accuracy), so every file stays valid JSON
    atomic_write_json(tmp_path / "r.json", {"acc": math.nan, "ok": [1.0, math.inf], "t": (1, -math.inf)})
    assert json.loads((tmp_path / "r.json").read_text(encoding="utf-8")) == {"acc": None, "ok": [1.0, None],
                                                                            "t": [1, None]}


def test_bad_mode():
    with pytest.raises(ValueError, match="mode"):
        with atomic_open("x", "a"):
            pass


def test_no_hand_written_atomic_file_write_in_the_package():
    """File writes go through sr2lora.core.atomic; os.replace elsewhere is only a folder swap (checkpoint, asset caches)."""
    import sr2lora

    root = os.path.dirname(sr2lora.__file__)
    folder_swaps = {os.path.join("runs", "checkpoint.py"), os.path.join("assets", "openclipart.py")}
    found = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            rel = os.path.relpath(os.path.join(dirpath, f), root)
            if f.endswith(".py") and rel != os.path.join("core", "atomic.py") and rel not in folder_swaps:
                text = open(os.path.join(dirpath, f), encoding="utf-8").read()
                if "os.replace(" in text or "mkstemp(" in text:
                    found.append(rel)
    assert found == [], f"hand-written atomic writes in {found}: use sr2lora.core.atomic"
