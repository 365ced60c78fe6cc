"""proxcl.data: IDX reading and its validation, the data sets, normalisation, seeded batches,
validation splits, and the download path (served locally: tests never reach the network)."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from proxcl import data
from proxcl.data import DataError

from conftest import IN_CI, need_fashion_mnist

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def _ref_idx(a: np.ndarray) -> bytes:
    """An IDX encoder written from the format description, independent of proxcl's."""
    codes = {"uint8": (0x08, "B"), "int8": (0x09, "b"), "int16": (0x0B, "h"), "int32": (0x0C, "i"),
             "float32": (0x0D, "f"), "float64": (0x0E, "d")}
    code, fmt = codes[a.dtype.name]
    out = bytes([0, 0, code, a.ndim]) + b"".join(struct.pack(">I", s) for s in a.shape)
    return out + b"".join(struct.pack(">" + fmt, v) for v in a.ravel().tolist())


def _fake_mnist(folder: Path, n_train=50, n_test=20, seed=0, gz=True, rows=28) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, rows, 28), dtype=np.uint8),
              "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, rows, 28), dtype=np.uint8),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8)}
    folder.mkdir(parents=True, exist_ok=True)
    for name, a in arrays.items():
        raw = _ref_idx(a)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return arrays


@pytest.fixture
def no_system_data(monkeypatch, tmp_path):
    """No $PROXCL_DATA, an empty cache and no Debian folder: only what a test puts there counts."""
    monkeypatch.delenv("PROXCL_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name, src in list(data.SOURCES.items()):
        monkeypatch.setitem(data.SOURCES, name,
                            dataclasses.replace(src, debian_dirs=(str(tmp_path / "nowhere"),)))
    return tmp_path


# ---- IDX ----------------------------------------------------------------------------------------

DTYPES = ["uint8", "int8", "int16", "int32", "float32", "float64"]


@settings(max_examples=30, deadline=None)
@given(dtype=st.sampled_from(DTYPES), shape=st.lists(st.integers(0, 5), min_size=1, max_size=4),
       gz=st.booleans(), seed=st.integers(0, 2 ** 32 - 1))
def test_idx_round_trip(tmp_path_factory, dtype, shape, gz, seed):
    rng = np.random.default_rng(seed)
    if dtype.startswith("float"):
        a = rng.standard_normal(shape).astype(dtype)
    else:
        info = np.iinfo(dtype)
        a = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    ref = _ref_idx(a)
    assert data.idx_bytes(a) == ref                    # proxcl's encoder agrees with the reference
    folder = tmp_path_factory.mktemp("idx")
    p = folder / ("x.idx.gz" if gz else "x.idx")
    p.write_bytes(gzip.compress(ref) if gz else ref)
    back = data.read_idx(p)
    assert back.dtype == np.dtype(dtype) and back.shape == tuple(shape)
    np.testing.assert_array_equal(back, a)
    np.testing.assert_array_equal(data.parse_idx(ref), a)
    q = folder / ("y.gz" if gz else "y")
    data.write_idx(q, a)
    np.testing.assert_array_equal(data.read_idx(q), a)
    assert [f.name for f in folder.iterdir() if f.name.startswith(".")] == []


@pytest.mark.parametrize("blob, match", [
    (b"", r"not an IDX file \(only 0 bytes\)"),
    (b"\x00\x00", r"only 2 bytes"),
    (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x05", r"magic starts 0100"),
    (b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x05", r"unknown IDX type code 0x07"),
    (b"\x00\x00\x08\x00", r"declares no dimensions"),
    (b"\x00\x00\x08\x03" + struct.pack(">I", 2), r"truncated IDX header"),
    (b"\x00\x00\x08\x02" + struct.pack(">II", 2, 3) + bytes(5), r"2x3 need 6 data bytes, the file has 5"),
    (b"\x00\x00\x08\x02" + struct.pack(">II", 2, 3) + bytes(7), r"need 6 data bytes, the file has 7"),
    (b"\x00\x00\x0d\x01" + struct.pack(">I", 2) + bytes(7), r"need 8 data bytes"),
])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_validation_errors(tmp_path, blob, match, gz):
    p = tmp_path / "bad"
    p.write_bytes(gzip.compress(blob) if gz else blob)
    with pytest.raises(DataError, match=match):
        data.read_idx(p)
    with pytest.raises(DataError, match=match):
        data.parse_idx(blob)


def test_idx_absurd_size_refused_before_reading(tmp_path):
    p = tmp_path / "huge.gz"
    p.write_bytes(gzip.compress(b"\x00\x00\x0e\x03" + struct.pack(">III", 2 ** 32 - 1, 2 ** 32 - 1, 99)))
    with pytest.raises(DataError, match="more than the .* allowed"):
        data.read_idx(p)
    # a raw file declaring far more than it holds is reported without allocating the declared size
    q = tmp_path / "big"
    q.write_bytes(b"\x00\x00\x08\x02" + struct.pack(">II", 40000, 40000) + bytes(10))
    with pytest.raises(DataError, match="need 1600000000 data bytes, the file has 10"):
        data.read_idx(q)


def test_idx_broken_gzip_and_missing(tmp_path):
    good = gzip.compress(_ref_idx(np.arange(1000, dtype=np.int32)))
    (tmp_path / "cut.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="cut.gz"):
        data.read_idx(tmp_path / "cut.gz")
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    (tmp_path / "flip.gz").write_bytes(bytes(bad))
    with pytest.raises(DataError):
        data.read_idx(tmp_path / "flip.gz")
    with pytest.raises(DataError, match="no such file"):
        data.read_idx(tmp_path / "absent")
    with pytest.raises(DataError, match="directory"):
        data.read_idx(tmp_path)


def test_idx_writer_rejects_unsupported():
    with pytest.raises(ValueError, match="no type"):
        data.idx_bytes(np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="dimensions"):
        data.idx_bytes(np.float32(1.0))


# ---- the real Fashion-MNIST ----------------------------------------------------------------------

def test_fashion_mnist_loads(fashion):
    assert fashion.images["train"].shape == (60000, 1, 28, 28)
    assert fashion.images["test"].shape == (10000, 1, 28, 28)
    assert fashion.images["train"].dtype == np.float32
    for split, n in (("train", 6000), ("test", 1000)):
        y = fashion.labels[split]
        assert y.dtype == np.int32
        np.testing.assert_array_equal(np.bincount(y, minlength=10), [n] * 10)   # balanced, 0..9
    assert fashion.class_names[0] == "T-shirt/top" and fashion.class_names[9] == "Ankle boot"
    assert not fashion.has_split("val")
    files = data.find_files("fashion-mnist")
    raw = data.read_idx(files["train_images"]).astype(np.float64)
    assert fashion.mean == pytest.approx(raw.mean(), rel=1e-12)
    assert fashion.std == pytest.approx(raw.std(), rel=1e-12)
    x = fashion.images["train"].astype(np.float64)
    assert abs(x.mean()) < 1e-4 and abs(x.std() - 1) < 1e-4
    ref = (raw[123] - raw.mean()) / raw.std()
    np.testing.assert_allclose(fashion.images["train"][123, 0], ref, rtol=0, atol=1e-5)


def test_debian_files_match_known_digests():
    """The IDX digests in proxcl.data are the contents of the official files."""
    need_fashion_mnist()
    files = data.find_files("fashion-mnist")
    for role, spec in data.SOURCES["fashion-mnist"].files.items():
        raw = Path(files[role]).read_bytes()
        if raw[:2] == b"\x1f\x8b":
            digest_gz = hashlib.sha256(raw).hexdigest()
            raw = gzip.decompress(raw)
            if digest_gz == spec.sha256_gz:
                continue
        assert hashlib.sha256(raw).hexdigest() == spec.sha256_idx, role


# ---- data sets from folders and specs ------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False])
def test_dir_spec_loads_given_files(no_system_data, gz):
    folder = no_system_data / "mine"
    arrays = _fake_mnist(folder, gz=gz)
    ds = data.load_dataset(f"mnist:{folder}", download=False)
    assert ds.class_names == tuple("0123456789")
    raw = arrays["train-images-idx3-ubyte"].astype(np.float64)
    np.testing.assert_allclose(ds.images["train"][:, 0],
                               (raw - raw.mean()) / raw.std(), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(ds.labels["test"], arrays["t10k-labels-idx1-ubyte"])
    # the test split is normalised with the training statistics, not its own
    traw = arrays["t10k-images-idx3-ubyte"].astype(np.float64)
    np.testing.assert_allclose(ds.images["test"][:, 0], (traw - raw.mean()) / raw.std(), atol=1e-5)


def test_search_order_prefers_proxcl_data(no_system_data, monkeypatch):
    a = _fake_mnist(no_system_data / "env" / "fashion-mnist", seed=1)
    _fake_mnist(data.cache_dir("fashion-mnist"), seed=2)
    monkeypatch.setenv("PROXCL_DATA", str(no_system_data / "env"))
    ds = data.load_dataset("fashion-mnist", download=False)
    np.testing.assert_array_equal(ds.labels["train"], a["train-labels-idx1-ubyte"])
    monkeypatch.delenv("PROXCL_DATA")
    ds2 = data.load_dataset("fashion-mnist", download=False)
    assert not np.array_equal(ds2.labels["train"], a["train-labels-idx1-ubyte"])


def test_dataset_errors(no_system_data):
    with pytest.raises(DataError, match="unknown data set 'cifar'"):
        data.load_dataset("cifar")
    with pytest.raises(DataError, match="nothing after"):
        data.load_dataset("mnist:")
    with pytest.raises(DataError, match="no such directory"):
        data.load_dataset(f"mnist:{no_system_data / 'absent'}")
    (no_system_data / "empty").mkdir()
    with pytest.raises(DataError, match="lacks some of"):
        data.load_dataset(f"fashion-mnist:{no_system_data / 'empty'}")
    with pytest.raises(DataError, match=r"not found \(downloads are off\).*apt-get install "
                                        r"dataset-fashion-mnist"):
        data.load_dataset("fashion-mnist", download=False)
    with pytest.raises(DataError, match="synthetic:N must be an integer"):
        data.load_dataset("synthetic:many")
    with pytest.raises(ValueError, match=r"validation split \(--val-split\)"):
        data.load_dataset("synthetic:100", val_split=1.0)
    # images and labels that disagree
    folder = no_system_data / "odd"
    _fake_mnist(folder)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_ref_idx(np.zeros(3, np.uint8))))
    with pytest.raises(DataError, match="has 20 images but t10k-labels-idx1-ubyte.gz has 3 labels"):
        data.load_dataset(f"mnist:{folder}")
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_ref_idx(np.zeros(20, np.int32))))
    with pytest.raises(DataError, match="expected uint8 labels"):
        data.load_dataset(f"mnist:{folder}")
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_ref_idx(np.full(20, 10, np.uint8))))
    with pytest.raises(DataError, match="labels outside 0..9"):
        data.load_dataset(f"mnist:{folder}")


# ---- batches, splits, normalisation --------------------------------------------------------------

@pytest.fixture(scope="module")
def synth():
    return data.load_dataset("synthetic:500")


def test_batches_deterministic_and_complete(synth):
    def order(seed, epoch, bs=64):
        xs, ys = zip(*synth.batches("train", bs, shuffle=True, seed=seed, epoch=epoch))
        return np.concatenate(xs), np.concatenate(ys)

    x1, y1 = order(3, 0)
    x2, y2 = order(3, 0)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    x3, _ = order(3, 1)
    x4, _ = order(4, 0)
    assert not np.array_equal(x1, x3) and not np.array_equal(x1, x4)
    # every sample exactly once per epoch: the shuffled set equals the ordered set
    flat = synth.images["train"].reshape(500, -1)
    perm = data.epoch_order(500, 3, 0)
    np.testing.assert_array_equal(x1.reshape(500, -1), flat[perm])
    np.testing.assert_array_equal(y1, synth.labels["train"][perm])
    assert sorted(perm.tolist()) == list(range(500))
    sizes = [len(y) for _, y in synth.batches("train", 64)]
    assert sizes == [64] * 7 + [52] and synth.num_batches("train", 64) == 8
    sizes = [len(y) for _, y in synth.batches("train", 64, shuffle=True, drop_last=True)]
    assert sizes == [64] * 7 and synth.num_batches("train", 64, drop_last=True) == 7
    xb, yb = next(synth.batches("test", 32))
    assert xb.shape == (32, 1, 28, 28) and xb.dtype == np.float32 and yb.dtype == np.int32
    with pytest.raises(ValueError, match="batch size"):
        next(synth.batches("train", 0))
    with pytest.raises(DataError, match="no 'val' split.*val_split > 0"):
        next(synth.batches("val", 8))


def test_epoch_order_is_fixed():
    """The permutation for a seed never changes between versions or machines."""
    a = data.epoch_order(10, 0, 0)
    np.testing.assert_array_equal(a, data.epoch_order(10, 0, 0))
    assert sorted(a.tolist()) == list(range(10)) and a.tolist() != list(range(10))


@pytest.mark.parametrize("frac", [0.1, 0.25])
def test_val_split(frac):
    full = data.load_dataset("synthetic:400")
    ds = data.load_dataset("synthetic:400", val_split=frac, seed=7)
    n_val = int(round(400 * frac))
    assert ds.size("val") == n_val and ds.size("train") == 400 - n_val and ds.size("test") == 80
    # train and val partition the full training set (compare raw pixels, undoing the normalisation)
    raw = lambda d, s: np.rint(d.images[s].astype(np.float64) * d.std + d.mean).reshape(len(d.labels[s]), -1)
    full_rows = {r.tobytes() for r in raw(full, "train").astype(np.uint8)}
    tr = {r.tobytes() for r in raw(ds, "train").astype(np.uint8)}
    va = {r.tobytes() for r in raw(ds, "val").astype(np.uint8)}
    assert not (tr & va) and (tr | va) == full_rows
    # statistics come from the training part only
    tr_pix = raw(ds, "train")
    assert ds.mean == pytest.approx(tr_pix.mean(), rel=1e-6)
    assert ds.mean != pytest.approx(full.mean, rel=1e-9)
    same = data.load_dataset("synthetic:400", val_split=frac, seed=7)
    np.testing.assert_array_equal(same.labels["val"], ds.labels["val"])
    other = data.load_dataset("synthetic:400", val_split=frac, seed=8)
    assert not np.array_equal(other.images["val"], ds.images["val"])


def test_normalise_matches_dataset(synth):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    ref = (img.astype(np.float64) - synth.mean) / synth.std
    for x in (img, img[None], img[None, None]):
        out = synth.normalise(x)
        assert out.shape == (1, 1, 28, 28) and out.dtype == np.float32
        np.testing.assert_allclose(out[0, 0], ref, rtol=1e-6, atol=1e-6)
    assert synth.normalisation == {"mean": synth.mean, "std": synth.std}
    with pytest.raises(ValueError, match="images must be"):
        data.normalise(np.zeros(5), 0.0, 1.0)
    with pytest.raises(ValueError, match="positive std"):
        data.normalise(img, 0.0, 0.0)


def test_synthetic_is_seeded_and_balanced():
    a = data.synthetic_arrays(300)
    b = data.synthetic_arrays(300)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    xtr, ytr, xte, yte = a
    assert xtr.shape == (300, 28, 28) and xtr.dtype == np.uint8 and xte.shape == (60, 28, 28)
    assert set(np.unique(ytr)) == set(range(10)) and np.bincount(ytr).min() > 10
    assert xtr.std() > 20          # not a constant image


# ---- download -----------------------------------------------------------------------------------

def test_download_verifies_and_caches(no_system_data):
    """Served from Debian's copy through file:// URLs: the digest check on the contents passes."""
    if not all((DEBIAN / f).is_file() for f in FILES):
        msg = f"no Debian Fashion-MNIST in {DEBIAN} to serve (apt-get install dataset-fashion-mnist)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    src = DEBIAN.as_uri() + "/"
    dest = data.download("fashion-mnist", urls=["file:///nonexistent-mirror/", src])
    assert dest == data.cache_dir("fashion-mnist")
    assert sorted(p.name for p in dest.iterdir()) == sorted(FILES)
    for f in FILES:
        assert (dest / f).read_bytes() == (DEBIAN / f).read_bytes()


class _Resp:
    def __init__(self, blob):
        self.blob = blob

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

    def read(self, n=-1):
        return self.blob if n < 0 else self.blob[:n]


def test_download_through_opener(no_system_data, monkeypatch):
    """load_dataset downloads when nothing is found; digests are checked before anything lands."""
    arrays = _fake_mnist(no_system_data / "served", gz=True)
    served = {f.name: f.read_bytes() for f in (no_system_data / "served").iterdir()}
    src = data.SOURCES["mnist"]
    files = {role: dataclasses.replace(f, sha256_gz=hashlib.sha256(served[f.name]).hexdigest())
             for role, f in src.files.items()}
    monkeypatch.setitem(data.SOURCES, "mnist", dataclasses.replace(src, files=files))
    asked = []

    def opener(url, timeout):
        asked.append(url)
        return _Resp(served[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(data.urllib.request, "urlopen", opener)
    ds = data.load_dataset("mnist")
    assert len(asked) == 4 and all(u.startswith(src.urls[0]) for u in asked)
    np.testing.assert_array_equal(ds.labels["train"], arrays["train-labels-idx1-ubyte"])
    assert sorted(p.name for p in data.cache_dir("mnist").iterdir()) == sorted(FILES)
    data.load_dataset("mnist")          # found in the cache now: no second download
    assert len(asked) == 4


def test_download_rejects_wrong_digest(no_system_data):
    blob = gzip.compress(b"not the data")
    with pytest.raises(DataError, match="SHA-256 does not match"):
        data.download("fashion-mnist", opener=lambda url, timeout: _Resp(blob))
    dest = data.cache_dir("fashion-mnist")
    assert not dest.exists() or list(dest.iterdir()) == []


def test_download_refuses_oversized(no_system_data, monkeypatch):
    monkeypatch.setattr(data, "DOWNLOAD_MAX_BYTES", 100)
    with pytest.raises(DataError, match="larger than 100 bytes"):
        data.download("mnist", opener=lambda url, timeout: _Resp(bytes(1000)))
    dest = data.cache_dir("mnist")
    assert not dest.exists() or list(dest.iterdir()) == []


def test_no_network_message(no_system_data):
    def opener(url, timeout):
        raise urllib.error.URLError("Temporary failure in name resolution")

    with pytest.raises(DataError) as e:
        data.download("fashion-mnist", opener=opener)
    msg = str(e.value)
    assert "\n" not in msg and "download failed" in msg and "name resolution" in msg
    for f in FILES:
        assert f in msg
    assert str(data.cache_dir("fashion-mnist")) in msg and "apt-get install dataset-fashion-mnist" in msg


def test_given_normalisation_is_used():
    """eval normalises with the statistics stored in a model file, not its own."""
    ds = data.load_dataset("synthetic:200", val_split=0.2, seed=1)
    again = data.load_dataset("synthetic:200", normalisation=ds.normalisation)
    assert again.normalisation == ds.normalisation
    raw = data.synthetic_arrays(200)[2].astype(np.float64)
    np.testing.assert_allclose(again.images["test"][:, 0], (raw - ds.mean) / ds.std, atol=1e-5)
    np.testing.assert_array_equal(again.images["test"], ds.images["test"])
    for bad in ({"mean": 1.0}, {"mean": 0.0, "std": 0.0}, {"mean": "x", "std": 1.0}):
        with pytest.raises(ValueError, match="normalisation"):
            data.load_dataset("synthetic:100", normalisation=bad)
