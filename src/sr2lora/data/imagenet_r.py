"""`imagenet-r`: ImageNet-R (200 classes, 30,000 images) with the canonical 24,000 / 6,000 split.

Images: the extracted hendrycks archive https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar, i.e.
``imagenet-r/<wnid>/<name>.jpg`` (``data.root`` may point at that folder or at the folder holding it).

Split, first match wins:

1. ``data.split_file``: a local train list; its test list is the file beside it whose name has ``train``
   replaced by ``test`` (``imagenet-r_train.yaml`` -> ``imagenet-r_test.yaml``); a folder holding both works too.
2. Pre-split folders ``root/train/<wnid>/`` and ``root/test/<wnid>/`` (the APER re-split, a different split).
3. ``imagenet-r_train.yaml`` / ``imagenet-r_test.yaml`` found in ``data.root`` (or the image folder).
4. The lists in the cache ``<cache_root>/splits/imagenet-r/``, downloaded there on first use (a few MB of text,
   never images) from :data:`SPLIT_SOURCES`. The download has a short timeout and an overall deadline, so
   without network it fails within seconds with a message naming the options; offline (``SR2LORA_OFFLINE=1``
   or ``HF_HUB_OFFLINE=1``, see :mod:`sr2lora.core.offline`) it is skipped.

The lists are the ones CODA-Prompt sampled once (random.seed(0), 80/20) and InfLoRA, Mammoth and most
prompt/LoRA continual-learning papers reuse. Format (YAML)::

    data:
    - data/imagenet-r/n02128757/sculpture_4.jpg
    ...
    targets:
    - 177
    ...

Paths are relative to the authors' working directory; only the last two components (``<wnid>/<file>``) are
used and mapped onto the image folder. The lists' ``targets`` number classes in the authors' ``os.listdir``
order; here labels are the sorted-wnid order like every other builder, and the lists' numbering is kept in
``info["list_targets"]`` (list target of each label) after checking it is one-to-one with the wnids.

Checksums: no published checksum of the lists is known, so the sha256 of each list is recorded in
``SHA256SUMS`` beside the cached copy at first download (or first use of lists placed there by hand) and
verified on every later use; a downloaded list is also checked for 24,000 / 6,000 entries over 200 classes
with one target per wnid before it is cached. ``info["list_sha256"]`` always holds the hashes of the lists used.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from ..core.atomic import atomic_write_bytes, atomic_write_text
from ..core.cache import file_sha256
from ..core.offline import is_offline, offline_reason
from .base import DataError, DatasetBundle, FileImages
from .folders import (
    PRESPLIT_LAYOUT,
    WNID_RE,
    absolute,
    cache_root,
    check_same_classes,
    is_presplit,
    presplit_bundle,
    readable_class_name,
    resolve_root,
)
from .registry import register_dataset

if TYPE_CHECKING:
    from ..config import DataConfig

LIST_NAMES = ("imagenet-r_train.yaml", "imagenet-r_test.yaml")
# (train URL, test URL) per source, tried in order. CODA-Prompt is where the lists come from; Mammoth vendors them.
SPLIT_SOURCES: dict[str, tuple[str, str]] = {
    "CODA-Prompt": (
        "https://raw.githubusercontent.com/GT-RIPL/CODA-Prompt/main/dataloaders/splits/imagenet-r_train.yaml",
        "https://raw.githubusercontent.com/GT-RIPL/CODA-Prompt/main/dataloaders/splits/imagenet-r_test.yaml",
    ),
    "Mammoth": (
        "https://raw.githubusercontent.com/aimagelab/mammoth/master/datasets/imagenet_r_utils/imagenet-r_train.yaml",
        "https://raw.githubusercontent.com/aimagelab/mammoth/master/datasets/imagenet_r_utils/imagenet-r_test.yaml",
    ),
}
CANONICAL_COUNTS = (24000, 6000)
CANONICAL_CLASSES = 200
IMAGES_URL = "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar"
SUMS_FILE = "SHA256SUMS"
_MAX_BYTES = 32 << 20


def split_cache_dir() -> Path:
    """Where downloaded split lists are kept: ``<cache_root>/splits/imagenet-r``."""
    return cache_root() / "splits" / "imagenet-r"


# ----------------------------------------------------------------------------------------------- lists
def _parse_simple(text: str) -> tuple[list[str], list[int]] | None:
    """Fast reader for the lists' exact shape (two block sequences of plain scalars); None if it differs."""
    data: list[str] = []
    targets: list[int] = []
    section = None
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s in ("data:", "targets:"):
            section = s[:-1]
        elif s.startswith("- ") and section == "data" and s[2:3] not in ("'", '"', "[", "{", "&", "*", "!"):
            data.append(s[2:].strip())
        elif s.startswith("- ") and section == "targets" and s[2:].strip().lstrip("-").isdigit():
            targets.append(int(s[2:]))
        else:
            return None
    return data, targets


def parse_split_text(text: str, where: str) -> tuple[list[str], list[int]]:
    """(paths, targets) from a split list's text (YAML mapping with ``data`` and ``targets`` lists)."""
    parsed = _parse_simple(text)
    if parsed is None:
        import yaml

        try:
            obj = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        except yaml.YAMLError as exc:
            raise DataError(f"{where}: not a valid split list ({exc})") from exc
        if not isinstance(obj, dict) or not isinstance(obj.get("data"), list):
            raise DataError(f"{where}: expected a YAML mapping with 'data' and 'targets' lists")
        try:
            parsed = [str(p) for p in obj["data"]], [int(t) for t in obj.get("targets") or []]
        except (TypeError, ValueError) as exc:
            raise DataError(f"{where}: 'targets' must be integers ({exc})") from exc
    data, targets = parsed
    if not data:
        raise DataError(f"{where}: the split list has no 'data' entries")
    if len(data) != len(targets):
        raise DataError(f"{where}: {len(data)} paths but {len(targets)} targets")
    return data, targets


def parse_split_list(path: Path) -> tuple[list[str], list[int]]:
    """(paths, targets) read from a split list file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"imagenet-r: cannot read split list {path}: {exc}") from exc
    return parse_split_text(text, str(path))


def test_list_for(train_list: Path) -> Path:
    """The test list beside a train list: the last ``train`` in its file name replaced by ``test``."""
    name = train_list.name
    i = name.rfind("train")
    if i < 0:
        raise DataError(
            f"data.split_file: {train_list} must be the train list with 'train' in its name (the test list "
            f"is found beside it with 'train' replaced by 'test', e.g. {LIST_NAMES[0]} / {LIST_NAMES[1]})"
        )
    return train_list.with_name(name[:i] + "test" + name[i + len("train") :])


def _entry_key(entry: str, where: str) -> tuple[str, str]:
    parts = PurePosixPath(entry.replace("\\", "/")).parts
    if len(parts) < 2:
        raise DataError(f"{where}: entry {entry!r} is not '<...>/<wnid>/<file>'")
    return parts[-2], parts[-1]


def check_lists(
    train: tuple[list[str], list[int]], test: tuple[list[str], list[int]], where: str
) -> tuple[list[tuple[str, str]], list[tuple[str, str]], dict[str, int]]:
    """Check a train/test pair: one target per class folder and back, same classes, no shared image.

    Returns the (wnid, file) keys of train and test and the lists' wnid -> target map.
    """
    keys = []
    to_target: dict[str, int] = {}
    to_wnid: dict[int, str] = {}
    for side, (data, targets) in (("train", train), ("test", test)):
        side_keys = []
        for entry, t in zip(data, targets):
            wnid, file = _entry_key(entry, where)
            if to_target.setdefault(wnid, t) != t or to_wnid.setdefault(t, wnid) != wnid:
                raise DataError(
                    f"{where}: {side} entry {entry!r} has target {t}, but the lists also give class folder "
                    f"{wnid} target {to_target[wnid]} / target {t} folder {to_wnid[t]} (need one target per folder)"
                )
            side_keys.append((wnid, file))
        keys.append(side_keys)
    check_same_classes(sorted({w for w, _ in keys[0]}), sorted({w for w, _ in keys[1]}), where)
    shared = set(keys[0]) & set(keys[1])
    if shared:
        ex = "/".join(sorted(shared)[0])
        raise DataError(f"{where}: {len(shared)} image(s) are in both train and test lists, e.g. {ex}")
    return keys[0], keys[1], to_target


def _read_sums(path: Path) -> dict[str, str]:
    sums = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) == 2:
            sums[parts[1].lstrip("*")] = parts[0].lower()
    return sums


def _write_sums(cache_dir: Path) -> None:
    lines = [f"{file_sha256(cache_dir / n)}  {n}\n" for n in LIST_NAMES]
    atomic_write_text(cache_dir / SUMS_FILE, "".join(lines))


def cached_split_lists(cache_dir: Path | None = None) -> tuple[Path, Path] | None:
    """The cached (train, test) lists if both exist, verified against their recorded sha256; else None.

    Lists put there by hand without ``SHA256SUMS`` get their hashes recorded now (trust on first use).
    """
    cache_dir = split_cache_dir() if cache_dir is None else cache_dir
    paths = (cache_dir / LIST_NAMES[0], cache_dir / LIST_NAMES[1])
    if not all(p.is_file() for p in paths):
        return None
    sums_path = cache_dir / SUMS_FILE
    if not sums_path.is_file():
        try:
            _write_sums(cache_dir)
        except OSError:  # a read-only cache still works, just without the recorded hashes
            pass
        return paths
    sums = _read_sums(sums_path)
    for p in paths:
        if sums.get(p.name) != file_sha256(p):
            raise DataError(
                f"imagenet-r: cached split list {p} does not match the sha256 recorded in {sums_path} "
                f"(changed or corrupted); delete {cache_dir} to download the lists again"
            )
    return paths


def _download(url: str, timeout: float, deadline: float) -> bytes:
    """GET ``url`` in a daemon thread so that no DNS or socket stall outlives ``deadline`` (monotonic time)."""
    import urllib.request

    box: dict[str, object] = {}

    def work() -> None:
        try:
            req = urllib.request.Request(url, headers={"User-Agent": "sr2lora"})
            with urllib.request.urlopen(req, timeout=timeout) as r:
                box["data"] = r.read(_MAX_BYTES + 1)
        except Exception as exc:  # URLError, timeouts, HTTP errors, ...
            box["error"] = exc

    t = threading.Thread(target=work, name="sr2lora-split-download", daemon=True)
    t.start()
    t.join(max(0.0, deadline - time.monotonic()))
    if t.is_alive():
        raise TimeoutError(f"no answer from {url} in time")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    data = box["data"]
    assert isinstance(data, bytes)
    if len(data) > _MAX_BYTES:
        raise ValueError(f"{url}: larger than {_MAX_BYTES} bytes, not a split list")
    return data


def fetch_split_lists(
    cache_dir: Path | None = None,
    sources: dict[str, tuple[str, str]] | None = None,
    timeout: float = 4.0,
    deadline: float = 10.0,
    expect_counts: tuple[int, int] | None = CANONICAL_COUNTS,
    expect_classes: int | None = CANONICAL_CLASSES,
) -> tuple[Path, Path, str]:
    """Download the (train, test) lists into ``cache_dir``, record their sha256, return (train, test, url).

    Sources are tried in order; each list is checked (entry counts, classes, one target per wnid) before it
    is written (atomically). The whole call returns within ``deadline`` seconds; on failure a
    :class:`DataError` lists what each source answered.
    """
    cache_dir = split_cache_dir() if cache_dir is None else cache_dir
    sources = SPLIT_SOURCES if sources is None else sources
    end = time.monotonic() + deadline
    errors = []
    for name, urls in sources.items():
        try:
            blobs = [_download(u, timeout, end) for u in urls]
            texts = [b.decode("utf-8") for b in blobs]
            lists = [parse_split_text(t, u) for t, u in zip(texts, urls)]
            tr_keys, te_keys, to_target = check_lists(lists[0], lists[1], f"{name} lists")
            if expect_counts is not None and (len(tr_keys), len(te_keys)) != tuple(expect_counts):
                raise DataError(
                    f"{len(tr_keys)}/{len(te_keys)} entries, expected {expect_counts[0]}/{expect_counts[1]}"
                )
            if expect_classes is not None and len(to_target) != expect_classes:
                raise DataError(f"{len(to_target)} classes, expected {expect_classes}")
        except Exception as exc:
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            for fname, blob in zip(LIST_NAMES, blobs):
                atomic_write_bytes(cache_dir / fname, blob)
            _write_sums(cache_dir)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            (cache_dir / "SOURCE.txt").write_text(
                f"{urls[0]}\n{urls[1]}\ndownloaded {stamp}\n", encoding="utf-8"
            )
        except OSError as exc:
            raise DataError(
                f"cannot write the split lists to {cache_dir} ({exc}); set SR2LORA_CACHE"
            ) from exc
        return cache_dir / LIST_NAMES[0], cache_dir / LIST_NAMES[1], urls[0]
    raise DataError("could not download the ImageNet-R split lists: " + "; ".join(errors))


# ----------------------------------------------------------------------------------------------- builder
def find_image_root(root: Path) -> Path:
    """The folder holding the ``<wnid>/`` class folders: ``root`` itself or ``root/imagenet-r``."""
    for d in (root, root / "imagenet-r"):
        if d.is_dir() and any(e.is_dir() and WNID_RE.match(e.name) for e in os.scandir(d)):
            return d
    raise DataError(
        f"imagenet-r: no <wnid>/ class folders (like n01443537/) in {root} or {root / 'imagenet-r'}; "
        f"extract {IMAGES_URL} there, or use pre-split folders {PRESPLIT_LAYOUT}"
    )


def _no_split_message(image_root: Path, cache_dir: Path, why: str) -> str:
    urls = "; ".join(f"{n}: {u[0]} and {u[1]}" for n, u in SPLIT_SOURCES.items())
    return (
        f"imagenet-r: no train/test split for {image_root}. Give one of: (1) the canonical CODA-Prompt split "
        f"lists ({CANONICAL_COUNTS[0]} train / {CANONICAL_COUNTS[1]} test): data.split_file=<dir>/{LIST_NAMES[0]} "
        f"with {LIST_NAMES[1]} beside it, or put both in {cache_dir} or in data.root - get them from {urls}; "
        f"(2) pre-split folders {PRESPLIT_LAYOUT} (the APER re-split). {why}"
    )


def lists_bundle(train_list: Path, test_list: Path, image_root: Path, source: str) -> DatasetBundle:
    """Build ImageNet-R from a train/test list pair, mapping ``<wnid>/<file>`` onto ``image_root``."""
    where = f"imagenet-r lists {train_list.name}/{test_list.name}"
    tr, te = parse_split_list(train_list), parse_split_list(test_list)
    tr_keys, te_keys, to_target = check_lists(tr, te, where)
    wnids = sorted(to_target)
    label = {w: i for i, w in enumerate(wnids)}
    missing = []
    out = []
    for keys in (tr_keys, te_keys):
        paths = [image_root / w / f for w, f in keys]
        missing.extend(str(p) for p in paths if not p.is_file())
        out.append(FileImages(paths, [label[w] for w, _ in keys]))
    if missing:
        raise DataError(
            f"imagenet-r: {len(missing)} image(s) named by the split lists are missing under {image_root}, "
            f"e.g. {', '.join(missing[:3])}; point data.root at the extracted imagenet-r/ folder ({IMAGES_URL})"
        )
    canonical = (len(tr_keys), len(te_keys)) == CANONICAL_COUNTS and len(wnids) == CANONICAL_CLASSES
    return DatasetBundle(
        train=out[0],
        test=out[1],
        class_names=[readable_class_name(w) for w in wnids],
        info={
            "source": source,
            "root": str(image_root),
            "split": "CODA-Prompt split lists (24,000 / 6,000)"
            if canonical
            else "split lists (non-canonical)",
            "train_list": str(train_list),
            "test_list": str(test_list),
            "list_sha256": {"train": file_sha256(train_list), "test": file_sha256(test_list)},
            "canonical_counts": canonical,
            "num_classes": len(wnids),
            "train": len(out[0]),
            "test": len(out[1]),
            "class_folders": wnids,
            "list_targets": [to_target[w] for w in wnids],
        },
    )


def _sentence(text: str) -> str:
    return (text[:1].upper() + text[1:]).rstrip(".") + "."


@register_dataset("imagenet-r")
def build_imagenet_r(cfg: DataConfig) -> DatasetBundle:
    """ImageNet-R: split lists (``data.split_file``, beside the data, cached or downloaded) or pre-split folders."""
    root = resolve_root(cfg, "imagenet-r")
    if not root.is_dir():
        raise DataError(
            f"imagenet-r: data folder {root} does not exist (set data.root); expected the extracted "
            f"{IMAGES_URL} (imagenet-r/<wnid>/*.jpg) plus split lists, or pre-split folders {PRESPLIT_LAYOUT}"
        )
    if cfg.split_file:
        train_list = absolute(cfg.split_file)
        if train_list.is_dir():
            train_list = train_list / LIST_NAMES[0]
        test_list = test_list_for(train_list)
        for p in (train_list, test_list):
            if not p.is_file():
                raise DataError(
                    f"data.split_file: split list {p} not found (train and test lists must sit side by side)"
                )
        return lists_bundle(train_list, test_list, find_image_root(root), "ImageNet-R, data.split_file lists")
    if is_presplit(root):
        return presplit_bundle(
            root, "imagenet-r", readable_class_name, "ImageNet-R, pre-split folders (APER)"
        )
    image_root = find_image_root(root)
    for d in dict.fromkeys((root, image_root)):
        if all((d / n).is_file() for n in LIST_NAMES):
            return lists_bundle(
                d / LIST_NAMES[0], d / LIST_NAMES[1], image_root, "ImageNet-R, lists in data.root"
            )
    cache_dir = split_cache_dir()
    cached = cached_split_lists(cache_dir)
    if cached:
        return lists_bundle(cached[0], cached[1], image_root, f"ImageNet-R, cached lists in {cache_dir}")
    if is_offline():
        raise DataError(
            _no_split_message(image_root, cache_dir, f"Download skipped (offline: {offline_reason()}).")
        )
    try:
        train_list, test_list, url = fetch_split_lists(cache_dir)
    except DataError as exc:
        raise DataError(_no_split_message(image_root, cache_dir, _sentence(str(exc)))) from exc
    return lists_bundle(train_list, test_list, image_root, f"ImageNet-R, lists downloaded from {url}")
