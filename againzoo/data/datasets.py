"""Dataset readers. Every reader returns an :class:`ArrayDataset`: uint8 images (N, H, W, C) and
int64 labels, the layout all of CIFAR's distributions share.

CIFAR-10/100 come from, in this order of preference (``source="auto"``):

1. the standard python-pickle folders ``cifar-10-batches-py`` / ``cifar-100-python``;
2. the packed files ``cifar10-jpeg75.npz`` (JPEG bytes + offsets, decoded once and cached) and
   ``cifar10-lossless-subset.npz`` (pixel-exact first 1,017 test images), see ``shared/data``;
3. an image-folder tree ``<dir>/<dataset>/{train,test}/<class>/*.png|jpg``;
4. torchvision's download (``download=True``; needs internet).

``digits`` is the embedded default dataset: scikit-learn's 8x8 handwritten digits (it ships
inside the package), upsampled to 16x16 RGB, split 1,497 train / 300 test with a fixed seed.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from . import safe_pickle

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DATASETS = ("cifar10", "cifar100", "digits")
SPLITS = ("train", "test", "test_lossless")
SOURCES = ("auto", "pickle", "npz", "folder", "torchvision")
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "digits": 10}


@dataclass
class ArrayDataset:
    """Images as uint8 (N, H, W, C), labels as int64 (N,), plus where they came from."""

    x: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]
    name: str
    split: str
    source: str
    lossless: bool = True
    notes: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.x.dtype != np.uint8 or self.x.ndim != 4 or len(self.x) != len(self.y):
            raise DataError(f"malformed {self.name}/{self.split}: images {self.x.dtype} {self.x.shape}, labels {self.y.shape}")

    def __len__(self) -> int:
        return len(self.y)

    def take(self, idx: np.ndarray, split: str | None = None) -> "ArrayDataset":
        """The images at ``idx`` (in that order), under ``split`` (default: this one's)."""
        return ArrayDataset(self.x[idx], self.y[idx], self.classes, self.name, split or self.split, self.source,
                            self.lossless, self.notes)

    def describe(self) -> dict:
        """Plain-data description, stored in metrics and eval.json."""
        return {"name": self.name, "split": self.split, "n": len(self), "source": self.source,
                "lossless": self.lossless, **self.notes}


def default_data_dir() -> Path | None:
    env = os.environ.get("AGAINZOO_DATA")
    return Path(env).expanduser() if env else None


def cache_dir() -> Path:
    return Path(os.environ.get("AGAINZOO_CACHE", Path.home() / ".cache" / "againzoo")).expanduser()


# -- readers ---------------------------------------------------------------------------------

def _pickle_dir(data_dir: Path, name: str) -> Path | None:
    folder = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}[name]
    for cand in (data_dir / folder, data_dir / name / folder):
        if cand.is_dir():
            return cand
    return None


def _read_pickles(folder: Path, name: str, split: str) -> ArrayDataset:
    if name == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        label_key, meta_file, names_key = "labels", "batches.meta", "label_names"
    else:
        files = ["train" if split == "train" else "test"]
        label_key, meta_file, names_key = "fine_labels", "meta", "fine_label_names"
    xs, ys = [], []
    try:
        for f in files:
            d = safe_pickle.load(folder / f)
            xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.append(np.asarray(d[label_key], dtype=np.int64))
        meta = safe_pickle.load(folder / meta_file)
        classes = tuple(meta[names_key])
    except (OSError, KeyError, ValueError, EOFError, Exception) as e:  # noqa: BLE001 - any parse failure
        raise DataError(f"malformed {name} pickle folder {folder}: {type(e).__name__}: {e}") from e
    return ArrayDataset(np.concatenate(xs), np.concatenate(ys), classes, name, split, f"pickle:{folder}")


# what np.load raises on a truncated, empty or foreign file (or one without the expected arrays)
NPZ_ERRORS = (zipfile.BadZipFile, EOFError, KeyError, ValueError, OSError)


def _decode_jpegs(buf: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(io.BytesIO(buf[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB"))
                     for i in range(len(offsets) - 1)])


def _read_npz(data_dir: Path, name: str, split: str) -> ArrayDataset | None:
    if name != "cifar10":
        return None
    if split == "test_lossless":
        path = data_dir / "cifar10-lossless-subset.npz"
        if not path.exists():
            return None
        try:
            d = np.load(path)
            x, y, classes = d["x_test"][:1000], d["y_test"][:1000].astype(np.int64), tuple(str(c) for c in d["classes"])
        except NPZ_ERRORS as e:
            raise DataError(f"malformed packed dataset {path} (truncated or not an npz?): {type(e).__name__}: {e}") from None
        return ArrayDataset(x, y, classes, name, split, f"npz:{path.name}", lossless=True,
                            notes={"subset": "first 1000 test images (RobustBench/AutoAttack n_ex=1000)"})
    path = data_dir / "cifar10-jpeg75.npz"
    if not path.exists():
        return None
    st = path.stat()
    key = hashlib.sha1(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}:{split}".encode()).hexdigest()[:16]
    cached = cache_dir() / f"cifar10-jpeg75-{split}-{key}.npz"
    try:
        d = np.load(path)
        classes = tuple(str(c) for c in d["classes"])
        y = d[f"{split}_labels"].astype(np.int64)
        x = None
        if cached.exists():
            try:
                x = np.load(cached)["x"]
            except NPZ_ERRORS:  # a torn or corrupt decode cache: decode again (it is only a cache)
                cached.unlink(missing_ok=True)
            if x is not None and len(x) != len(y):
                x = None
        if x is None:
            x = _decode_jpegs(d[f"{split}_jpeg"], d[f"{split}_offsets"])
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_suffix(".tmp.npz")
                np.savez(tmp, x=x)
                os.replace(tmp, cached)
            except OSError:  # an unwritable cache only costs the next run a decode
                pass
    except NPZ_ERRORS as e:
        raise DataError(f"malformed packed dataset {path} (truncated or not an npz?): {type(e).__name__}: {e}") from None
    return ArrayDataset(x, y, classes, name, split, f"npz:{path.name}", lossless=False,
                        notes={"compression": "JPEG quality 75 (lossy)"})


def _read_folder(data_dir: Path, name: str, split: str) -> ArrayDataset | None:
    from PIL import Image

    root = data_dir / name / ("test" if split == "test_lossless" else split)
    if not root.is_dir():
        return None
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    xs, ys = [], []
    for i, c in enumerate(classes):
        for f in sorted((root / c).iterdir()):
            if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"):
                try:
                    xs.append(np.asarray(Image.open(f).convert("RGB")))
                except (OSError, ValueError) as e:
                    raise DataError(f"unreadable image {f}: {e}") from None
                ys.append(i)
    if not xs:
        raise DataError(f"image folder {root} has no images in class sub-folders")
    return ArrayDataset(np.stack(xs), np.asarray(ys, dtype=np.int64), classes, name, split, f"folder:{root}")


def _read_torchvision(data_dir: Path, name: str, split: str) -> ArrayDataset:
    import torchvision

    cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}[name]
    try:
        ds = cls(str(data_dir), train=split == "train", download=True)
    except Exception as e:  # noqa: BLE001 - network errors vary by platform
        raise DataError(f"torchvision could not download {name} into {data_dir}: {e}") from e
    return _read_pickles(Path(ds.root) / ds.base_folder, name, split)


def _digits(split: str) -> ArrayDataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    img = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    img = np.repeat(np.repeat(img, 2, axis=1), 2, axis=2)  # 8x8 -> 16x16, nearest
    x = np.repeat(img[..., None], 3, axis=3)
    y = d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    idx = order[:1497] if split == "train" else order[1497:]
    return ArrayDataset(x[idx], y[idx], tuple(str(i) for i in range(10)), "digits", split,
                        "sklearn.datasets.load_digits", notes={"upsampled": "8x8 -> 16x16 nearest"})


def load_dataset(name: str, split: str = "train", data_dir: str | Path | None = None,
                 source: str = "auto", download: bool = False) -> ArrayDataset:
    """Load ``name`` ('cifar10', 'cifar100', 'digits') ``split`` ('train', 'test', 'test_lossless').

    ``data_dir`` defaults to ``$AGAINZOO_DATA``. Raises :class:`DataError` naming every place
    that was looked at when nothing is found.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; available: {', '.join(SPLITS)}")
    if source not in SOURCES:
        raise DataError(f"unknown data source {source!r}; available: {', '.join(SOURCES)}")
    if name == "digits":
        return _digits("train" if split == "train" else "test")
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    if root is None:
        raise DataError(f"no data dir for {name}: set data.data_dir in the recipe, --data-dir, or AGAINZOO_DATA")
    looked: list[str] = []
    pickle_split = "test" if split == "test_lossless" else split
    if source in ("auto", "pickle"):
        folder = _pickle_dir(root, name)
        if folder is not None:
            ds = _read_pickles(folder, name, pickle_split)
            if split == "test_lossless":
                ds = ArrayDataset(ds.x[:1000], ds.y[:1000], ds.classes, name, split, ds.source,
                                  notes={"subset": "first 1000 test images"})
            return ds
        looked.append(f"{root}/{'cifar-10-batches-py' if name == 'cifar10' else 'cifar-100-python'}")
    if source in ("auto", "npz"):
        ds = _read_npz(root, name, split)
        if ds is not None:
            return ds
        if name == "cifar10":
            looked.append(f"{root}/{'cifar10-lossless-subset.npz' if split == 'test_lossless' else 'cifar10-jpeg75.npz'}")
    if source in ("auto", "folder"):
        ds = _read_folder(root, name, split)
        if ds is not None:
            return ds
        looked.append(f"{root}/{name}/{pickle_split}/<class>/*.png")
    if source == "torchvision" or (source == "auto" and download):
        return _read_torchvision(root, name, pickle_split)
    raise DataError(f"{name} ({split}) not found; looked for: {'; '.join(looked)} (data.download=true fetches it with torchvision)")
