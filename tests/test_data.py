import pickle

import numpy as np
import pytest
import torch

from againzoo.data import TensorLoader, load_dataset, random_crop_flip
from againzoo.data import safe_pickle
from againzoo.errors import DataError

from .conftest import SHARED_DATA


def write_cifar100(root, n_train=20, n_test=10):
    """A synthetic CIFAR-100 in the standard python format."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        d = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": list(rng.integers(0, 100, n)),
             "coarse_labels": [0] * n, "filenames": [f"{i}.png" for i in range(n)]}
        (folder / split).write_bytes(pickle.dumps(d))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)],
                                                "coarse_label_names": [f"s{i}" for i in range(20)]}))
    return folder


def test_cifar100_pickle_folder(tmp_path):
    folder = write_cifar100(tmp_path)
    ds = load_dataset("cifar100", "train", tmp_path)
    assert ds.x.shape == (20, 32, 32, 3) and ds.x.dtype == np.uint8 and len(ds.classes) == 100
    raw = pickle.loads((folder / "train").read_bytes())
    # CHW rows -> HWC images
    np.testing.assert_array_equal(ds.x[3, :, :, 1], raw["data"][3, 1024:2048].reshape(32, 32))
    assert load_dataset("cifar100", "test", tmp_path).x.shape[0] == 10


def test_restricted_unpickler_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "evil"
    p.write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        safe_pickle.load(p)


def test_malformed_pickle_folder_is_a_clear_error(tmp_path):
    folder = write_cifar100(tmp_path)
    (folder / "train").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="malformed cifar100 pickle folder"):
        load_dataset("cifar100", "train", tmp_path)


def test_missing_dataset_names_what_was_looked_for(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", "train", tmp_path)
    msg = str(e.value)
    assert "cifar-10-batches-py" in msg and "cifar10-jpeg75.npz" in msg and "cifar10/train" in msg
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("mnist", "train", tmp_path)


def test_image_folder(tmp_path):
    from PIL import Image

    for c in ("cat", "dog"):
        (tmp_path / "cifar10" / "train" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(tmp_path / "cifar10" / "train" / c / f"{i}.png")
    ds = load_dataset("cifar10", "train", tmp_path)
    assert ds.x.shape == (6, 32, 32, 3) and ds.classes == ("cat", "dog") and list(ds.y) == [0, 0, 0, 1, 1, 1]


def test_digits_embedded():
    tr, te = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert tr.x.shape == (1497, 16, 16, 3) and te.x.shape == (300, 16, 16, 3)
    assert set(np.unique(tr.y)) == set(range(10))


@pytest.mark.skipif(not (SHARED_DATA / "cifar10-jpeg75.npz").exists(), reason="shared CIFAR-10 pack not present")
def test_packed_cifar10_and_lossless_subset(tmp_path, monkeypatch):
    monkeypatch.setenv("AGAINZOO_CACHE", str(tmp_path))
    monkeypatch.setenv("AGAINZOO_DATA", str(SHARED_DATA))
    te = load_dataset("cifar10", "test")
    assert te.x.shape == (10000, 32, 32, 3) and not te.lossless and te.y[0] == 3
    assert list(tmp_path.glob("*.npz")), "decoded split is cached"
    again = load_dataset("cifar10", "test")  # from the cache
    np.testing.assert_array_equal(again.x, te.x)
    ll = load_dataset("cifar10", "test_lossless")
    assert ll.lossless and ll.x.shape == (1000, 32, 32, 3)
    np.testing.assert_array_equal(ll.y, te.y[:1000])
    # JPEG-75 is lossy: close to, but not equal to, the originals
    diff = np.abs(ll.x.astype(int) - te.x[:1000].astype(int))
    assert 0 < diff.mean() < 10


def test_crop_flip_is_a_translation_or_mirror():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6) + 1
    g = torch.Generator().manual_seed(0)
    out = random_crop_flip(x, pad=2, flip=False, generator=g)
    for i in range(2):
        xp = torch.nn.functional.pad(x[i], (2, 2, 2, 2))
        found = any(torch.equal(out[i], xp[:, r:r + 6, c:c + 6]) for r in range(5) for c in range(5))
        assert found
    flipped = random_crop_flip(x, crop=False, generator=torch.Generator().manual_seed(3))
    for i in range(2):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(2))


def test_loader_batches_and_resumable_order():
    x = np.random.default_rng(0).integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    y = np.arange(10)
    a = TensorLoader(x, y, 4, shuffle=True, augment="crop_flip", seed=1)
    batches = list(a)
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    assert batches[0][0].dtype == torch.float32 and batches[0][0].max() <= 1
    state = a.state_dict()
    first = [b[1].tolist() for b in a]
    b = TensorLoader(x, y, 4, shuffle=True, augment="crop_flip", seed=99)
    b.load_state_dict(state)
    assert [t[1].tolist() for t in b] == first
