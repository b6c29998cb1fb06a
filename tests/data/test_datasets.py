"""Dataset builders on tiny trees written in the real on-disk formats (CIFAR-100 pickles, ImageNet-R tree +
CODA-Prompt split lists, APER pre-split folders, CUB's official layout, a user folder).

Every test hashes the data folder before building and after loading every image: builders must never write
into a user's data folder. No network: split-list downloads are tested against a local HTTP server.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import pickle
import shutil
import socket
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from sr2lora.config import DataConfig
from sr2lora.data import cifar100, folders, imagenet_r
from sr2lora.data.base import DataError, FileImages
from sr2lora.data.registry import build_dataset, dataset_names


# ----------------------------------------------------------------------------------------------- helpers
def tree_digest(root: Path) -> dict[str, str]:
    """{relative path: sha256 of the bytes, or '<dir>'} for everything under root, hidden entries included."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "<dir>"
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


def write_image(path: Path, seed: int, fmt: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path, fmt)


def load_all(bundle) -> None:
    for split in (bundle.train, bundle.test):
        assert len(split) == len(split.targets)
        for i in range(len(split)):
            im = split.load(i)
            assert im.mode == "RGB" and im.size[0] > 0


def build_unchanged(cfg: DataConfig, data_dir: Path):
    """Build through the registry, load every image, and check data_dir is byte-for-byte unchanged."""
    before = tree_digest(data_dir)
    bundle = build_dataset(cfg)
    load_all(bundle)
    assert tree_digest(data_dir) == before
    return bundle


def label_of(bundle, split: str, path_part: str) -> int:
    images = getattr(bundle, split)
    hits = [int(y) for p, y in zip(images.paths, images.targets) if path_part in p]
    assert len(set(hits)) == 1, (path_part, hits)
    return hits[0]


def test_registered():
    assert {"cifar100", "imagenet-r", "imagenet-a", "cub200", "folder"} <= set(dataset_names())


# ----------------------------------------------------------------------------------------------- CIFAR-100
CIFAR_NAMES = ["apple", "aquarium_fish", "bear"]


def make_cifar(root: Path) -> dict[str, np.ndarray]:
    """A 3-class CIFAR-100 in torchvision's extracted format (python pickles, rows of 3072 CHW bytes)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 6), ("test", 3)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = [i % 3 for i in range(n)]
        entry = {"filenames": [f"{split}_{i}.png" for i in range(n)], "batch_label": f"{split} batch"}
        entry.update({"fine_labels": fine, "coarse_labels": [0] * n, "data": data})
        with open(folder / split, "wb") as f:
            pickle.dump(entry, f, protocol=2)
        arrays[split] = data
    with open(folder / "meta", "wb") as f:
        pickle.dump(
            {"fine_label_names": CIFAR_NAMES, "coarse_label_names": ["fruit", "fish", "mammal"]}, f, 2
        )
    return arrays


@pytest.fixture
def tiny_md5(monkeypatch):
    """Point the md5 check at the tiny files' own sums. Only the expected checksums change: torchvision's
    official sums cannot match generated files; the reading and checking code runs unchanged."""

    def use(folder: Path) -> None:
        sums = {n: hashlib.md5(Path(folder, n).read_bytes()).hexdigest() for n in ("train", "test", "meta")}
        monkeypatch.setattr(cifar100, "EXPECTED_MD5", sums)

    return use


def test_cifar100_reads_torchvision_format(tmp_path, tiny_md5):
    arrays = make_cifar(tmp_path)
    tiny_md5(tmp_path / "cifar-100-python")
    bundle = build_unchanged(DataConfig(dataset="cifar100", root=str(tmp_path)), tmp_path)
    assert bundle.class_names == ["apple", "aquarium fish", "bear"]
    assert (len(bundle.train), len(bundle.test)) == (6, 3)
    assert bundle.train.targets.tolist() == [0, 1, 2, 0, 1, 2]
    expected = arrays["train"][4].reshape(3, 32, 32).transpose(1, 2, 0)
    assert np.array_equal(np.asarray(bundle.train.load(4)), expected)
    assert bundle.info["train"] == 6 and bundle.info["num_classes"] == 3
    # data.root may also name the cifar-100-python folder itself
    again = build_dataset(DataConfig(dataset="cifar100", root=str(tmp_path / "cifar-100-python")))
    assert np.array_equal(again.test.images, bundle.test.images)


def test_cifar100_md5_mismatch_is_an_error(tmp_path, tiny_md5):
    make_cifar(tmp_path)
    tiny_md5(tmp_path / "cifar-100-python")
    with open(tmp_path / "cifar-100-python" / "test", "r+b") as f:  # corrupt one byte
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 1]))
    with pytest.raises(DataError, match="md5 mismatch.*cifar-100-python/test"):
        build_dataset(DataConfig(dataset="cifar100", root=str(tmp_path)))


def test_cifar100_missing_without_download_fails_fast(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(DataError) as err:
        build_dataset(DataConfig(dataset="cifar100", root=str(tmp_path), download=False))
    msg = str(err.value)
    assert str(tmp_path / "cifar-100-python" / "train") in msg
    assert "data.download=true" in msg and "cifar-100-python.tar.gz" in msg
    assert time.monotonic() - t0 < 2
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------- ImageNet-R
R_WNIDS = {"n01443537": "goldfish", "n01484850": "great white shark", "n02128757": "snow leopard"}
R_LIST_TARGETS = {"n02128757": 0, "n01443537": 1, "n01484850": 2}  # the lists' own (listdir) numbering


def make_imagenet_r(parent: Path) -> Path:
    """parent/imagenet-r/<wnid>/<domain>_<i>.jpg, as extracted from hendrycks' imagenet-r.tar."""
    for k, wnid in enumerate(R_WNIDS):
        for i in range(4):
            write_image(parent / "imagenet-r" / wnid / f"{['art', 'sketch'][i % 2]}_{i}.jpg", 10 * k + i)
    (parent / "imagenet-r" / "README.txt").write_text("ImageNet-R\n")
    return parent / "imagenet-r"


def make_lists(folder: Path, targets: dict[str, int] | None = None) -> tuple[Path, Path]:
    """imagenet-r_{train,test}.yaml written the way CODA-Prompt wrote them (yaml.dump, relative paths)."""
    targets = R_LIST_TARGETS if targets is None else targets
    folder.mkdir(parents=True, exist_ok=True)
    train, test = [], []
    for wnid in R_WNIDS:
        for i in range(4):
            (test if i == 3 else train).append(f"data/imagenet-r/{wnid}/{['art', 'sketch'][i % 2]}_{i}.jpg")
    rng = np.random.default_rng(0)
    paths = []
    for name, entries in (("imagenet-r_train.yaml", train), ("imagenet-r_test.yaml", test)):
        entries = [entries[i] for i in rng.permutation(len(entries))]
        data = {"data": entries, "targets": [targets[e.split("/")[2]] for e in entries]}
        with open(folder / name, "w") as f:
            yaml.dump(data, f, default_flow_style=False)
        paths.append(folder / name)
    return paths[0], paths[1]


def check_r_bundle(bundle, n_train: int = 9, n_test: int = 3) -> None:
    assert bundle.class_names == list(R_WNIDS.values())
    assert (len(bundle.train), len(bundle.test)) == (n_train, n_test)
    for k, wnid in enumerate(R_WNIDS):  # labels follow sorted wnids, not the lists' targets
        assert label_of(bundle, "train", f"/{wnid}/") == k
        assert label_of(bundle, "test", f"/{wnid}/") == k


def test_split_list_format_parses_like_yaml(tmp_path):
    train, _ = make_lists(tmp_path)
    text = train.read_text()
    assert text.startswith("data:\n- data/imagenet-r/")
    fast = imagenet_r.parse_split_text(text, "x")
    assert imagenet_r._parse_simple(text) is not None
    obj = yaml.safe_load(text)
    assert fast == (obj["data"], obj["targets"])
    flow = yaml.dump(obj, default_flow_style=True)  # other YAML styles go through the YAML parser
    assert imagenet_r._parse_simple(flow) is None
    assert imagenet_r.parse_split_text(flow, "x") == fast


def test_imagenet_r_split_file(tmp_path):
    data = tmp_path / "data"
    images = make_imagenet_r(data)
    train_list, test_list = make_lists(tmp_path / "lists")
    for root in (data, images):  # the folder holding imagenet-r/ or imagenet-r/ itself
        cfg = DataConfig(dataset="imagenet-r", root=str(root), split_file=str(train_list))
        bundle = build_unchanged(cfg, data)
        check_r_bundle(bundle)
        assert bundle.info["list_targets"] == [R_LIST_TARGETS[w] for w in R_WNIDS]
        assert bundle.info["test_list"] == str(test_list)
        assert bundle.info["canonical_counts"] is False
        assert bundle.info["list_sha256"]["train"] == hashlib.sha256(train_list.read_bytes()).hexdigest()
    # a folder holding both lists is accepted too
    cfg = DataConfig(dataset="imagenet-r", root=str(data), split_file=str(tmp_path / "lists"))
    check_r_bundle(build_dataset(cfg))


def test_imagenet_r_lists_beside_data(tmp_path, monkeypatch):
    monkeypatch.setenv("SR2LORA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SR2LORA_OFFLINE", "1")
    images = make_imagenet_r(tmp_path / "data")
    make_lists(images)
    check_r_bundle(build_unchanged(DataConfig(dataset="imagenet-r", root=str(images)), tmp_path / "data"))
    assert not (tmp_path / "cache").exists()


def test_imagenet_r_presplit(tmp_path):
    for k, wnid in enumerate(R_WNIDS):
        for side, n in (("train", 3), ("test", 2)):
            for i in range(n):
                write_image(tmp_path / side / wnid / f"x{i}.jpg", k * 10 + i)
    bundle = build_unchanged(DataConfig(dataset="imagenet-r", root=str(tmp_path)), tmp_path)
    check_r_bundle(bundle, 9, 6)
    assert "pre-split" in bundle.info["source"]


def test_imagenet_r_without_lists_explains_options(tmp_path, monkeypatch):
    monkeypatch.setenv("SR2LORA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SR2LORA_OFFLINE", "1")
    make_imagenet_r(tmp_path / "data")
    with pytest.raises(DataError) as err:
        build_dataset(DataConfig(dataset="imagenet-r", root=str(tmp_path / "data")))
    msg = str(err.value)
    assert "data.split_file" in msg and "root/train/<class>" in msg
    assert (
        "https://raw.githubusercontent.com/GT-RIPL/CODA-Prompt/main/dataloaders/splits/imagenet-r_train.yaml"
        in msg
    )
    assert str(tmp_path / "cache" / "splits" / "imagenet-r") in msg


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_imagenet_r_download_failure_is_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("SR2LORA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SR2LORA_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # either variable alone would skip the download
    port = closed_port()
    urls = (f"http://127.0.0.1:{port}/train.yaml", f"http://127.0.0.1:{port}/test.yaml")
    monkeypatch.setattr(imagenet_r, "SPLIT_SOURCES", {"unreachable": urls})
    make_imagenet_r(tmp_path / "data")
    t0 = time.monotonic()
    with pytest.raises(DataError, match="Give one of.*Could not download.*unreachable"):
        build_dataset(DataConfig(dataset="imagenet-r", root=str(tmp_path / "data")))
    assert time.monotonic() - t0 < 5
    assert not (tmp_path / "cache" / "splits" / "imagenet-r" / "imagenet-r_train.yaml").exists()


def test_split_download_never_hangs(tmp_path):
    with socket.socket() as srv:  # accepts connections, never answers
        srv.bind(("127.0.0.1", 0))
        srv.listen(4)
        url = f"http://127.0.0.1:{srv.getsockname()[1]}/x.yaml"
        t0 = time.monotonic()
        with pytest.raises(DataError, match="silent"):
            imagenet_r.fetch_split_lists(tmp_path, {"silent": (url, url)}, timeout=30, deadline=1.0)
        assert time.monotonic() - t0 < 3


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def list_server(tmp_path, monkeypatch):
    """Serve tiny split lists over HTTP on 127.0.0.1 (stands in for raw.githubusercontent.com)."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    served = tmp_path / "served"
    make_lists(served)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    yield {"local": (f"{base}/imagenet-r_train.yaml", f"{base}/imagenet-r_test.yaml")}, served
    server.shutdown()
    server.server_close()


def test_split_download_caches_and_records_sha256(tmp_path, monkeypatch, list_server):
    sources, served = list_server
    cache = tmp_path / "cache"
    # the canonical size check rejects lists that are not 24,000 / 6,000, and nothing is cached
    with pytest.raises(DataError, match="expected 24000/6000"):
        imagenet_r.fetch_split_lists(cache / "splits" / "imagenet-r", sources)
    assert not cache.exists()
    train, test, url = imagenet_r.fetch_split_lists(
        cache / "splits" / "imagenet-r", sources, expect_counts=(9, 3), expect_classes=3
    )
    assert url == sources["local"][0]
    assert train.read_bytes() == (served / "imagenet-r_train.yaml").read_bytes()
    sums = (train.parent / "SHA256SUMS").read_text()
    assert f"{hashlib.sha256(test.read_bytes()).hexdigest()}  imagenet-r_test.yaml" in sums
    # the builder now finds the cached lists, with the network off
    monkeypatch.setenv("SR2LORA_CACHE", str(cache))
    monkeypatch.setenv("SR2LORA_OFFLINE", "1")
    make_imagenet_r(tmp_path / "data")
    bundle = build_unchanged(DataConfig(dataset="imagenet-r", root=str(tmp_path / "data")), tmp_path / "data")
    check_r_bundle(bundle)
    assert "cached" in bundle.info["source"]
    # a changed cached list no longer matches its recorded sha256
    with open(test, "a") as f:
        f.write("- 0\n")
    with pytest.raises(DataError, match="sha256"):
        build_dataset(DataConfig(dataset="imagenet-r", root=str(tmp_path / "data")))


def test_imagenet_r_list_errors(tmp_path):
    data = tmp_path / "data"
    make_imagenet_r(data)
    # targets that disagree with the class folders
    bad_train, _ = make_lists(tmp_path / "bad", {"n02128757": 0, "n01443537": 0, "n01484850": 2})
    with pytest.raises(DataError, match="one target per folder"):
        build_dataset(DataConfig(dataset="imagenet-r", root=str(data), split_file=str(bad_train)))
    # an image named by the lists but absent from the tree
    good_train, _ = make_lists(tmp_path / "lists")
    partial_data = tmp_path / "partial"
    shutil.copytree(data, partial_data)
    (partial_data / "imagenet-r" / "n01484850" / "art_0.jpg").unlink()
    with pytest.raises(DataError, match="1 image.*missing.*n01484850/art_0.jpg"):
        build_dataset(DataConfig(dataset="imagenet-r", root=str(partial_data), split_file=str(good_train)))
    # the test list must sit beside the train list; the train list must say 'train'
    (tmp_path / "lists" / "imagenet-r_test.yaml").unlink()
    with pytest.raises(DataError, match="imagenet-r_test.yaml not found"):
        build_dataset(DataConfig(dataset="imagenet-r", root=str(data), split_file=str(good_train)))
    with pytest.raises(DataError, match="'train' in its name"):
        build_dataset(DataConfig(dataset="imagenet-r", root=str(data), split_file=str(tmp_path / "x.yaml")))
    with pytest.raises(DataError, match=f"{tmp_path / 'nowhere'} does not exist"):
        build_dataset(DataConfig(dataset="imagenet-r", root=str(tmp_path / "nowhere")))


# ----------------------------------------------------------------------------------------------- pre-split
def make_presplit(root: Path, classes: list[str], n_train: int = 3, n_test: int = 2) -> None:
    for k, c in enumerate(classes):
        for side, n in (("train", n_train), ("test", n_test)):
            for i in range(n):
                write_image(root / side / c / f"{c[:4]}_{i}.jpg", 100 * k + i)


def test_imagenet_a_presplit(tmp_path):
    make_presplit(tmp_path, ["n01531178", "n01498041"])
    bundle = build_unchanged(DataConfig(dataset="imagenet-a", root=str(tmp_path)), tmp_path)
    assert bundle.class_names == ["stingray", "goldfinch"]  # sorted wnids n01498041, n01531178
    assert (len(bundle.train), len(bundle.test)) == (6, 4)
    assert label_of(bundle, "train", "n01531178") == 1 and label_of(bundle, "test", "n01498041") == 0
    assert bundle.train.paths == sorted(bundle.train.paths)


def test_cub200_presplit(tmp_path):
    make_presplit(tmp_path, ["002.Laysan_Albatross", "001.Black_footed_Albatross"])
    bundle = build_unchanged(DataConfig(dataset="cub200", root=str(tmp_path)), tmp_path)
    assert bundle.class_names == ["Black footed Albatross", "Laysan Albatross"]
    assert bundle.info["class_folders"] == ["001.Black_footed_Albatross", "002.Laysan_Albatross"]


def test_presplit_errors(tmp_path):
    make_presplit(tmp_path / "a", ["n01498041", "n01531178"])
    shutil.rmtree(tmp_path / "a" / "test" / "n01531178")
    write_image(tmp_path / "a" / "test" / "n01534433" / "x.jpg", 0)
    with pytest.raises(DataError, match="only in train: n01531178; only in test: n01534433"):
        build_dataset(DataConfig(dataset="imagenet-a", root=str(tmp_path / "a")))
    make_presplit(tmp_path / "b", ["001.Black_footed_Albatross", "002.Laysan_Albatross"])
    for f in (tmp_path / "b" / "test" / "002.Laysan_Albatross").iterdir():
        f.unlink()
    (tmp_path / "b" / "test" / "002.Laysan_Albatross" / "notes.txt").write_text("no image here")
    with pytest.raises(DataError, match="hold no image.*002.Laysan_Albatross"):
        build_dataset(DataConfig(dataset="cub200", root=str(tmp_path / "b")))
    for name in ("imagenet-a", "cub200"):
        with pytest.raises(DataError, match=f"{tmp_path / 'missing'} does not exist.*root/train/<class>"):
            build_dataset(DataConfig(dataset=name, root=str(tmp_path / "missing")))
    write_image(tmp_path / "raw" / "n01498041" / "x.jpg", 0)
    with pytest.raises(DataError, match="not pre-split.*data.dataset=folder"):
        build_dataset(DataConfig(dataset="imagenet-a", root=str(tmp_path / "raw")))


# ----------------------------------------------------------------------------------------------- CUB official
CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]


def make_cub_official(parent: Path) -> Path:
    """parent/CUB_200_2011 with CUB's metadata files (1-based ids, space separated) and images/<class>/."""
    cub = parent / "CUB_200_2011"
    rows = {"images.txt": [], "image_class_labels.txt": [], "train_test_split.txt": []}
    img_id = 0
    for c, name in enumerate(CUB_CLASSES, 1):
        bird = name.split(".", 1)[1]
        for i in range(3):
            img_id += 1
            rel = f"{name}/{bird}_{i:04d}_{700000 + img_id}.jpg"
            write_image(cub / "images" / rel, img_id)
            rows["images.txt"].append(f"{img_id} {rel}")
            rows["image_class_labels.txt"].append(f"{img_id} {c}")
            rows["train_test_split.txt"].append(f"{img_id} {0 if i == 1 else 1}")
    rows["classes.txt"] = [f"{c} {name}" for c, name in enumerate(CUB_CLASSES, 1)]
    for fname, lines in rows.items():
        (cub / fname).write_text("\n".join(lines) + "\n")
    (cub / "README").write_text("CUB-200-2011\n")
    return cub


def test_cub200_official_layout(tmp_path):
    cub = make_cub_official(tmp_path)
    for root in (tmp_path, cub):
        bundle = build_unchanged(DataConfig(dataset="cub200", root=str(root)), tmp_path)
        assert bundle.class_names == ["Black footed Albatross", "Laysan Albatross", "Sooty Albatross"]
        assert (len(bundle.train), len(bundle.test)) == (6, 3)
        assert bundle.train.targets.tolist() == [0, 0, 1, 1, 2, 2]
        assert bundle.test.targets.tolist() == [0, 1, 2]
        assert bundle.test.paths[1].endswith("002.Laysan_Albatross/Laysan_Albatross_0001_700005.jpg")
        assert bundle.info["split"] == "official train_test_split.txt"


def test_cub200_official_missing_image(tmp_path):
    cub = make_cub_official(tmp_path)
    victim = next((cub / "images" / CUB_CLASSES[2]).iterdir())
    victim.unlink()
    with pytest.raises(DataError, match=f"1 image.*missing.*{victim.name}"):
        build_dataset(DataConfig(dataset="cub200", root=str(tmp_path)))


# ----------------------------------------------------------------------------------------------- user folder
def make_user_folder(root: Path) -> None:
    for i in range(10):
        write_image(root / "cat" / f"c{i}.jpg", i)
    for i in range(3):
        write_image(root / "dog" / f"d{i}.JPG", 20 + i)
    write_image(root / "dog" / "more" / "d9.PNG", 29, "PNG")  # nested, upper-case extension
    write_image(root / "emu" / "e0.jpeg", 30)
    write_image(root / "emu" / ".hidden.jpg", 31)  # hidden: ignored
    write_image(root / "emu" / ".thumbs" / "t.jpg", 32)  # hidden folder: ignored
    write_image(root / ".cache_dir" / "z.jpg", 33)  # hidden class folder: ignored
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "README.md").write_text("my dataset")


def test_folder_single_tree_seeded_split(tmp_path):
    make_user_folder(tmp_path)
    cfg = DataConfig(dataset="folder", root=str(tmp_path), split_seed=0, test_fraction=0.25)
    bundle = build_unchanged(cfg, tmp_path)
    assert bundle.class_names == ["cat", "dog", "emu"]
    counts = {
        c: (int((bundle.train.targets == k).sum()), int((bundle.test.targets == k).sum()))
        for k, c in enumerate(bundle.class_names)
    }
    assert counts == {
        "cat": (8, 2),
        "dog": (3, 1),
        "emu": (1, 0),
    }  # round(2.5)=2, round(1)=1, 1 image -> train
    assert bundle.info["classes_without_test_images"] == ["emu"]
    assert bundle.info["skipped_non_image_files"] == 1
    assert not any("/." in p for p in bundle.train.paths + bundle.test.paths)
    assert any(p.endswith("dog/more/d9.PNG") for p in bundle.train.paths + bundle.test.paths)
    assert set(bundle.train.paths).isdisjoint(bundle.test.paths)
    # deterministic for a seed, and the seed matters
    again = build_dataset(cfg)
    assert again.test.paths == bundle.test.paths and again.train.paths == bundle.train.paths
    splits = {
        tuple(build_dataset(DataConfig(dataset="folder", root=str(tmp_path), split_seed=s)).test.paths)
        for s in range(5)
    }
    assert len(splits) > 1


def test_folder_split_keeps_both_sides(tmp_path):
    make_user_folder(tmp_path)  # cat 10, dog 4, emu 1 images
    for frac in (0.01, 0.5, 0.99):
        bundle = build_dataset(DataConfig(dataset="folder", root=str(tmp_path), split_seed=3, test_fraction=frac))
        for k, n in enumerate((10, 4)):
            tr = [p for p, y in zip(bundle.train.paths, bundle.train.targets) if y == k]
            te = [p for p, y in zip(bundle.test.paths, bundle.test.targets) if y == k]
            assert len(tr) >= 1 and len(te) >= 1 and len(tr) + len(te) == n
            assert tr == sorted(tr) and te == sorted(te)  # each side keeps the scan's sorted order
    with pytest.raises(DataError, match="test_fraction"):
        build_dataset(DataConfig(dataset="folder", root=str(tmp_path), test_fraction=1.0))


def test_folder_presplit_and_errors(tmp_path, monkeypatch):
    make_presplit(tmp_path / "ok", ["b_class", "a_class"])
    monkeypatch.chdir(tmp_path)  # a relative data.root gives absolute image paths
    bundle = build_unchanged(DataConfig(dataset="folder", root="ok"), tmp_path / "ok")
    assert bundle.class_names == ["a_class", "b_class"] and (len(bundle.train), len(bundle.test)) == (6, 4)
    assert all(os.path.isabs(p) for p in bundle.train.paths + bundle.test.paths)
    make_presplit(tmp_path / "bad", ["x", "y"])
    shutil.rmtree(tmp_path / "bad" / "train" / "y")
    with pytest.raises(DataError, match="only in test: y"):
        build_dataset(DataConfig(dataset="folder", root=str(tmp_path / "bad")))
    shutil.rmtree(tmp_path / "bad" / "test")
    with pytest.raises(DataError, match="has train/ but no test/"):
        build_dataset(DataConfig(dataset="folder", root=str(tmp_path / "bad")))
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="hold no image.*cls"):
        build_dataset(DataConfig(dataset="folder", root=str(tmp_path / "empty")))
    with pytest.raises(DataError, match=f"{tmp_path / 'missing'} does not exist"):
        build_dataset(DataConfig(dataset="folder", root=str(tmp_path / "missing")))
    with pytest.raises(DataError, match="set data.root"):
        build_dataset(DataConfig(dataset="folder", root=None))


def test_check_readable_finds_bad_files(tmp_path):
    write_image(tmp_path / "good.jpg", 0)
    write_image(tmp_path / "good.png", 1, "PNG")
    (tmp_path / "bad.jpg").write_bytes(b"this is not a jpeg")
    images = FileImages([tmp_path / "good.jpg", tmp_path / "bad.jpg", tmp_path / "good.png"], [0, 0, 1])
    before = tree_digest(tmp_path)
    assert folders.check_readable(images) == [str(tmp_path / "bad.jpg")]
    assert folders.check_readable(images, workers=1) == [str(tmp_path / "bad.jpg")]
    assert tree_digest(tmp_path) == before
