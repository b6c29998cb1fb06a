"""`openclipart`: a small, offline, many-class benchmark of clip-art drawings of everyday subjects.

What: the Debian/Ubuntu package ``openclipart-svg`` ships ~7,400 public-domain SVG drawings filed in folders
by subject (``animals/birds``, ``food/fruit``, ``transportation/boating`` ...). A curated set of those folders
(:data:`CURATED_CLASSES`, 40 classes, ~2,000 drawings) becomes a class-incremental benchmark: each folder is a
class, each drawing is rasterised once to a ``render_size`` px RGB square and cached as arrays.

Why: it is real, varied, many-class image data in a *rendition* domain (clip art, in spirit a small
ImageNet-R) that needs no download and no licence care, so demos and tests can run on machines without network
access.

This module reads the rendered cache; :mod:`sr2lora.assets.openclipart` builds it (``sr2lora assets --preset
clipart-10t``, which ``make assets``, ``make test`` and ``make demo`` run) and documents how the classes were
chosen, how drawings are de-duplicated and repaired and how they are rendered. A missing or stale cache is an
:class:`~sr2lora.core.errors.AssetsError` naming that command; the dataset builder never renders.

Split (:func:`stratified_split`): no official split exists, so each class is split by a seeded permutation
that orders its drawings by ``sha256("<seed>:<md5>")``; the first ``round(test_fraction * n)`` (at least 1, at
most n-1) go to test. It depends only on file contents and the seed, so it is the same on every machine and
every numpy version, and a drawing keeps its side when other files are added or removed. It is recomputed on
every load, so ``data.split_seed`` / ``data.test_fraction`` need no new render.

Cache: ``<cache>/openclipart/<render_size>px-<sha of the class list>/`` holds ``images.npy`` (N,S,S,3 uint8),
``labels.npy`` and ``manifest.json`` (classes, per-image source file + md5 + split, package version, counts,
failures). It is read while the class list, render size and source listing (file names and sizes) match; when
the svg folder is absent, a cache for the same classes and size is used unverified. ``<cache>`` is
``$SR2LORA_CACHE``, else ``$XDG_CACHE_HOME/sr2lora``, else ``~/.cache/sr2lora``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.cache import cache_dir
from ..core.errors import AssetsError
from .base import ArrayImages, DataError, DatasetBundle
from .registry import register_dataset
from .splits import content_hash_order
from .splits import stratified_split as _split

if TYPE_CHECKING:
    from ..config import DataConfig

log = logging.getLogger(__name__)

DEFAULT_ROOT = "/usr/share/openclipart/svg"
PACKAGE = "openclipart-svg"
FORMAT_VERSION = 1  # bump when rendering or the cache layout changes: old caches must then be built again
INSTALL_HINT = (
    "install it with `sudo apt-get install openclipart-svg` (Debian/Ubuntu), "
    "or point `data.root=` at a copy of its svg folder"
)
BUILD_HINT = (
    "render them with `sr2lora assets --preset <preset>` (the preset and data.* overrides of this run, e.g. "
    "`sr2lora assets --preset clipart-10t`; `make assets` does that for the shipped clipart and xdomain presets)"
)

# Readable names where the folder's last part would mislead (the flag folders are named after countries).
NAME_OVERRIDES: dict[str, str] = {
    "signs_and_symbols/flags/america/united_states": "us_state_flags",
    "signs_and_symbols/flags/europe/france": "french_flags",
    "signs_and_symbols/flags/semaphore": "semaphore_flags",
}

# The 40 classes, sorted by class name (= label order): the curation rule of sr2lora.assets.openclipart
# (discover_classes) on the package, minus its judgement calls (JUDGED_EXCLUSIONS, GEOMETRIC_KEPT). Counts are
# drawings after de-duplication and rendering on openclipart-svg 1:0.18+dfsg-19 (train/test at test_fraction 0.25).
CURATED_CLASSES: list[str] = [
    "shapes/arrows",  # arrows 104 (78/26)
    "food/beverages",  # beverages 42 (31/11)
    "animals/birds",  # birds 45 (34/11)
    "transportation/boating",  # boating 34 (25/9)
    "people/bodypart",  # bodypart 27 (20/7)
    "food/breads_and_carbs",  # breads_and_carbs 28 (21/7)
    "animals/bugs",  # bugs 49 (37/12)
    "shapes/callouts",  # callouts 26 (19/7)
    "signs_and_symbols/clocks",  # clocks 25 (19/6)
    "decorations",  # decorations 26 (19/7)
    "food/desserts",  # desserts 67 (50/17)
    "electronics",  # electronics 27 (20/7)
    "animals/fish",  # fish 22 (16/6)
    "shapes/flowchart",  # flowchart 28 (21/7)
    "plants/flowers",  # flowers 31 (23/8)
    "signs_and_symbols/flags/europe/france",  # french_flags 49 (37/12)
    "food/fruit",  # fruit 83 (62/21)
    "geography",  # geography 114 (85/29)
    "computer/hardware",  # hardware 54 (40/14)
    "people/clothing/hats",  # hats 24 (18/6)
    "recreation/holiday",  # holiday 25 (19/6)
    "buildings/homes",  # homes 37 (28/9)
    "shapes/jigsaw",  # jigsaw 49 (37/12)
    "signs_and_symbols/led",  # led 58 (43/15)
    "animals/mammals",  # mammals 60 (45/15)
    "signs_and_symbols/map_symbols",  # map_symbols 157 (118/39)
    "food/meats_and_eggs",  # meats_and_eggs 30 (22/8)
    "recreation/music",  # music 70 (52/18)
    "office",  # office 122 (91/31)
    "recreation/party",  # party 31 (23/8)
    "transportation/roadsigns",  # roadsigns 70 (52/18)
    "signs_and_symbols/flags/semaphore",  # semaphore_flags 30 (22/8)
    "people/smilies",  # smilies 43 (32/11)
    "recreation/sports",  # sports 65 (49/16)
    "people/stickmen",  # stickmen 52 (39/13)
    "recreation/toys",  # toys 27 (20/7)
    "signs_and_symbols/flags/america/united_states",  # us_state_flags 24 (18/6)
    "transportation/vehicles",  # vehicles 46 (34/12)
    "tools/weapons",  # weapons 33 (25/8)
    "signs_and_symbols/weather",  # weather 30 (22/8)
]


# --- Small helpers ------------------------------------------------------------------------------------------
def class_name(folder: str) -> str:
    """Readable name of a class folder: its last part (``animals/mammals`` -> ``mammals``) or an override."""
    return NAME_OVERRIDES.get(folder, folder.rstrip("/").split("/")[-1])


def class_names(folders: Sequence[str]) -> list[str]:
    """Unique readable names for ``folders``; a shared name gets each folder's parent prefixed."""
    base = [class_name(f) for f in folders]
    names = list(base)
    for i, f in enumerate(folders):
        if base.count(base[i]) > 1:
            parts = f.rstrip("/").split("/")
            names[i] = "_".join(parts[-2:]) if len(parts) > 1 else parts[0]
    if len(set(names)) != len(names):
        raise DataError(f"openclipart: class folders do not give unique names: {list(folders)}")
    return names


def list_svgs(folder: Path) -> list[Path]:
    """SVG files directly in ``folder`` (symlinks to files included, broken links skipped), sorted by name."""
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError:
        return []
    return [p for p in entries if p.suffix.lower() == ".svg" and p.is_file()]


def source_fingerprint(root: Path, folders: Sequence[str]) -> str:
    """sha256 of the class folders' SVG listing (names, byte sizes): cheap change detection for the cache."""
    h = hashlib.sha256()
    for folder in folders:
        for p in list_svgs(root / folder):
            h.update(f"{folder}/{p.name}\t{p.stat().st_size}\n".encode())
    return h.hexdigest()


# --- Split --------------------------------------------------------------------------------------------------
def stratified_split(labels: np.ndarray, md5s: Sequence[str], seed: int, test_fraction: float) -> np.ndarray:
    """Boolean mask, True = test: per class the ``round(test_fraction * n)`` drawings (half up; >= 1, <= n-1)
    that come first when ordered by ``sha256(f"{seed}:{md5}")``, a seeded permutation independent of numpy and
    of file order (:func:`sr2lora.data.splits.content_hash_order`). The cache build and the loader both call
    this, so the split recorded in the manifest and the one recomputed on load are the same rule."""
    by_content = content_hash_order(seed, md5s)

    def order(c: int, idx: np.ndarray) -> np.ndarray:
        if len(idx) < 2:
            raise DataError(f"openclipart: class {c} has {len(idx)} drawing(s); a split needs at least 2")
        return by_content(c, idx)

    return _split(labels, test_fraction, order, rounding="half-up", field="data.test_fraction")


# --- Cache --------------------------------------------------------------------------------------------------
def class_list_sha(folders: Sequence[str]) -> str:
    """Short sha of the ordered class-folder list (names the cache folder)."""
    return hashlib.sha256(json.dumps(list(folders)).encode()).hexdigest()[:12]


def cache_path(folders: Sequence[str], render_size: int, cache: Path | None = None) -> Path:
    """Where the arrays for this class list and size live."""
    return (cache or cache_dir()) / "openclipart" / f"{render_size}px-{class_list_sha(folders)}"


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest of the cache folder ``path``, or None if it is missing or unreadable."""
    try:
        return json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def cache_matches(
    man: dict[str, Any] | None, folders: Sequence[str], size: int, fingerprint: str | None
) -> bool:
    """Whether a manifest describes this class list and size (and, unless ``fingerprint`` is None, these
    source files)."""
    if not man or man.get("format") != FORMAT_VERSION or man.get("render_size") != size:
        return False
    if [c["folder"] for c in man.get("classes", [])] != list(folders):
        return False
    return fingerprint is None or man.get("source_fingerprint") == fingerprint


def resolve_classes(
    root: str | Path | None, classes: Sequence[str] | None, render_size: int, cache: str | Path | None
) -> tuple[Path, list[str], list[str], Path]:
    """(svg root, class folders and names in label order, cache folder) for the arguments the loader and the
    cache builder share: ``classes`` default to :data:`CURATED_CLASSES`, labels follow the sorted names."""
    root = Path(root or DEFAULT_ROOT)
    folders = list(CURATED_CLASSES if classes is None else classes)
    if not folders:
        raise DataError("openclipart: empty class list")
    if render_size < 8:
        raise DataError(f"data.render_size: must be at least 8 px, got {render_size}")
    names = class_names(folders)
    order = sorted(range(len(folders)), key=lambda i: names[i])
    folders = [folders[i] for i in order]
    names = [names[i] for i in order]
    return root, folders, names, cache_path(folders, render_size, Path(cache) if cache else None)


def check_class_folders(root: Path, folders: Sequence[str]) -> None:
    """DataError naming the class folders missing under an existing svg root."""
    absent = [f for f in folders if not (root / f).is_dir()]
    if absent:
        raise DataError(
            f"openclipart: class folders missing under {root}: {absent}; "
            "is it the svg folder of openclipart-svg?"
        )


def load_openclipart(
    root: str | Path | None = None,
    classes: Sequence[str] | None = None,
    render_size: int = 128,
    split_seed: int = 0,
    test_fraction: float = 0.25,
    cache: str | Path | None = None,
) -> DatasetBundle:
    """Read the rendered drawings of ``classes`` under ``root`` from the cache and split them.

    ``classes`` are folders relative to ``root`` (default :data:`CURATED_CLASSES`); labels follow the classes
    sorted by readable name. The cache must match the class list, the size and the files now under ``root``;
    if it does not, :class:`AssetsError` says which command renders it. If ``root`` is missing but a cache for
    these classes and size exists, the cache is used unverified (e.g. on a machine without the package);
    otherwise :class:`DataError` says how to install it.
    """
    root, folders, names, dest = resolve_classes(root, classes, render_size, cache)
    man = read_manifest(dest)
    verified = True
    if not root.is_dir():
        if not cache_matches(man, folders, render_size, None):
            raise DataError(f"openclipart: svg root {root} not found; {INSTALL_HINT}, then {BUILD_HINT}")
        verified = False
        log.warning("openclipart: %s missing; using the cache %s unverified", root, dest)
    else:
        check_class_folders(root, folders)
        if not cache_matches(man, folders, render_size, source_fingerprint(root, folders)):
            what = (
                f"the drawings under {root} changed since they were rendered into {dest}"
                if cache_matches(man, folders, render_size, None)
                else f"the {len(folders)} classes are not rendered at {render_size} px yet (no cache in {dest})"
            )
            raise AssetsError(f"openclipart: {what}; {BUILD_HINT}")
    manifest_bytes = (dest / "manifest.json").read_bytes()
    man = json.loads(manifest_bytes)
    images = np.load(dest / "images.npy")
    labels = np.load(dest / "labels.npy")
    md5s = [r["md5"] for r in man["images"]]
    if len(images) != len(labels) or len(labels) != len(md5s):
        raise AssetsError(f"openclipart: cache {dest} is inconsistent; delete it and {BUILD_HINT}")
    is_test = stratified_split(labels, md5s, split_seed, test_fraction)
    info = {
        "source": f"{PACKAGE} {man.get('package_version') or '(version unknown)'} at {man['source_root']}",
        "root": str(root),
        "source_verified": verified,
        "cache": str(dest),
        "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
        "render_size": render_size,
        "classes": len(folders),
        "images": len(labels),
        "train": int((~is_test).sum()),
        "test": int(is_test.sum()),
        "render_failures": man["counts"]["failures"],
        "duplicates_removed": {
            k: man["counts"][k]
            for k in ("within_class_duplicates", "cross_class_duplicates", "pixel_duplicates")
        },
        "split": f"stratified, seed {split_seed}, test_fraction {test_fraction}, sha256(seed:md5) order",
        "build_seconds": man.get("build_seconds"),
    }
    return DatasetBundle(
        train=ArrayImages(images[~is_test], labels[~is_test], "openclipart/train"),
        test=ArrayImages(images[is_test], labels[is_test], "openclipart/test"),
        class_names=names,
        info=info,
    )


@register_dataset("openclipart")
def build_openclipart(cfg: DataConfig, classes: Sequence[str] | None = None) -> DatasetBundle:
    """The curated 40-class clip-art benchmark (``data.root`` overrides the svg folder, ``data.render_size``
    the raster size, ``data.split_seed``/``data.test_fraction`` the split); see the module docstring."""
    return load_openclipart(
        root=cfg.root,
        classes=classes,
        render_size=cfg.render_size,
        split_seed=cfg.split_seed,
        test_fraction=cfg.test_fraction,
    )
