"""Data sets: the IDX file format, Fashion-MNIST and MNIST (found on disk or downloaded with
SHA-256 checks), a small synthetic set for fast tests, normalisation and seeded mini-batches.

``load_dataset(spec) -> Dataset``; a ``Dataset`` holds float32 images [N, 1, 28, 28] normalised
with the training split's mean and standard deviation, int32 labels, and the class names.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import struct
import sys
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError
from .fileio import atomic_write_bytes


class DataError(Exception):
    """A data set or data file that cannot be used: a one-line message."""


# ---- IDX ----------------------------------------------------------------------------------------
# Layout: two zero bytes, a type code, the number of dimensions d; d big-endian uint32 sizes; then
# the elements, row-major, big-endian.

IDX_TYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
             0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_IDX_CODES = {np.dtype(v).newbyteorder("=").str: k for k, v in IDX_TYPES.items()}
IDX_MAX_BYTES = 1 << 31          # larger payloads are refused before anything is allocated


def _idx_header(head: bytes, name: str) -> tuple[np.dtype, tuple[int, ...], int]:
    """Parse the fixed 4-byte prefix and the sizes; return (dtype, shape, header length)."""
    if len(head) < 4:
        raise DataError(f"{name}: not an IDX file (only {len(head)} bytes)")
    if head[0] != 0 or head[1] != 0:
        raise DataError(f"{name}: not an IDX file (magic starts {head[:2].hex()}, expected 0000)")
    code, ndim = head[2], head[3]
    if code not in IDX_TYPES:
        raise DataError(f"{name}: unknown IDX type code 0x{code:02x}")
    if ndim == 0:
        raise DataError(f"{name}: IDX file declares no dimensions")
    hlen = 4 + 4 * ndim
    if len(head) < hlen:
        raise DataError(f"{name}: truncated IDX header ({len(head)} of {hlen} bytes)")
    shape = struct.unpack(f">{ndim}I", head[4:hlen])
    return IDX_TYPES[code], tuple(int(s) for s in shape), hlen


def parse_idx(buf: bytes, name: str = "IDX data") -> np.ndarray:
    """Decode IDX bytes into a native-endian numpy array, checking the size exactly."""
    return _read_idx_stream(io.BytesIO(buf), name, math.inf)


def read_idx(path, max_bytes: int = IDX_MAX_BYTES) -> np.ndarray:
    """Read an IDX file, raw or gzip-compressed (recognised by content, not by name)."""
    path = Path(path)
    name = path.name
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
            f.seek(0)
            if magic == b"\x1f\x8b":
                with gzip.GzipFile(fileobj=f) as g:
                    return _read_idx_stream(g, name, max_bytes)
            return _read_idx_stream(f, name, max_bytes)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not an IDX file") from None
    except (OSError, EOFError, zlib.error) as e:   # gzip.BadGzipFile is an OSError
        raise DataError(f"{name}: cannot decompress or read: {e}") from None


def _read_idx_stream(f, name: str, max_bytes: int) -> np.ndarray:
    head = f.read(4)
    if len(head) == 4 and head[:2] == b"\0\0":
        head += f.read(4 * head[3])
    dtype, shape, hlen = _idx_header(head, name)
    expect = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if expect > max_bytes:
        raise DataError(f"{name}: IDX sizes {'x'.join(map(str, shape))} declare {expect} bytes, "
                        f"more than the {max_bytes} allowed")
    data = _read_at_most(f, expect + 1)  # one byte more: trailing data is an error too
    if len(data) != expect:
        more = " or more" if len(data) > expect else ""
        raise DataError(f"{name}: IDX sizes {'x'.join(map(str, shape))} need {expect} data bytes, "
                        f"the file has {len(data)}{more}")
    return np.frombuffer(data, dtype=dtype, count=expect // dtype.itemsize).astype(
        dtype.newbyteorder("="), copy=True).reshape(shape)


def _read_at_most(f, n: int, chunk: int = 1 << 24) -> bytes:
    """Read up to n bytes in chunks, so a size declared by a file is never allocated up front."""
    parts, got = [], 0
    while got < n:
        b = f.read(min(chunk, n - got))
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def idx_bytes(array) -> bytes:
    """Encode a numpy array (uint8, int8, int16, int32, float32, float64) as IDX bytes."""
    a = np.asarray(array)
    code = _IDX_CODES.get(a.dtype.newbyteorder("=").str)
    if code is None:
        raise InputError(f"IDX has no type for dtype {a.dtype}")
    if a.ndim == 0 or a.ndim > 255:
        raise InputError(f"IDX needs 1 to 255 dimensions, got {a.ndim}")
    head = bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    return head + np.ascontiguousarray(a, dtype=IDX_TYPES[code]).tobytes()


def write_idx(path, array) -> None:
    """Write an IDX file atomically; gzip-compressed when the name ends in .gz."""
    data = idx_bytes(array)
    if str(path).endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    atomic_write_bytes(Path(path), data)


# ---- the MNIST family ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _File:
    name: str                  # file name as distributed (gzip)
    sha256_gz: str             # SHA-256 of the .gz file as served by the official source
    sha256_idx: str | None     # SHA-256 of the decompressed IDX bytes (any gzip packaging)


@dataclass(frozen=True)
class _Source:
    name: str
    urls: tuple[str, ...]      # base URLs tried in order
    files: dict                # role -> _File
    class_names: tuple[str, ...]
    debian_dirs: tuple[str, ...]
    debian_package: str | None


_FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                    "Sneaker", "Bag", "Ankle boot")

# The .gz digests are those of the files the official sources serve.  The IDX digests were computed
# from Debian's dataset-fashion-mnist (whose .gz files are repacked, so only their contents match).
SOURCES = {
    "fashion-mnist": _Source(
        "fashion-mnist",
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        {"train_images": _File("train-images-idx3-ubyte.gz",
                               "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                               "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
         "train_labels": _File("train-labels-idx1-ubyte.gz",
                               "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                               "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
         "test_images": _File("t10k-images-idx3-ubyte.gz",
                              "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                              "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
         "test_labels": _File("t10k-labels-idx1-ubyte.gz",
                              "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                              "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34")},
        _FASHION_CLASSES,
        ("/usr/share/datasets/fashion-mnist",),
        "dataset-fashion-mnist"),
    "mnist": _Source(
        "mnist",
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        {"train_images": _File("train-images-idx3-ubyte.gz",
                               "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", None),
         "train_labels": _File("train-labels-idx1-ubyte.gz",
                               "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", None),
         "test_images": _File("t10k-images-idx3-ubyte.gz",
                              "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", None),
         "test_labels": _File("t10k-labels-idx1-ubyte.gz",
                              "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", None)},
        tuple(str(i) for i in range(10)),
        ("/usr/share/datasets/mnist",),
        None),
}


def cache_dir(name: str) -> Path:
    """Where downloads go: $XDG_CACHE_HOME/proxcl/<name>, by default ~/.cache/proxcl/<name>."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "proxcl" / name


def search_dirs(name: str) -> list[Path]:
    """The folders looked in, in order: $PROXCL_DATA/<name>, $PROXCL_DATA, the cache, Debian's."""
    dirs = []
    env = os.environ.get("PROXCL_DATA")
    if env:
        dirs += [Path(env) / name, Path(env)]
    dirs.append(cache_dir(name))
    dirs += [Path(d) for d in SOURCES[name].debian_dirs]
    return dirs


def _find_in(folder: Path, gz_name: str) -> Path | None:
    for cand in (gz_name, gz_name[:-3]):
        p = folder / cand
        if p.is_file():
            return p
    return None


def find_files(name: str, folder=None) -> dict | None:
    """{role: path} for the four files in ``folder`` (or the first search folder holding all four)."""
    src = SOURCES[name]
    folders = [Path(folder)] if folder is not None else search_dirs(name)
    for d in folders:
        found = {role: _find_in(d, f.name) for role, f in src.files.items()}
        if all(found.values()):
            return found
    return None


def _missing_message(name: str, download_note: str) -> str:
    src = SOURCES[name]
    files = ", ".join(f.name for f in src.files.values())
    apt = f" or `apt-get install {src.debian_package}`" if src.debian_package else ""
    return (f"{name} not found{download_note}: put {files} (from {src.urls[0]}) into "
            f"{cache_dir(name)} or $PROXCL_DATA/{name}{apt}, or pass --data {name}:DIR")


def _check_digest(f: _File, blob: bytes, url: str) -> None:
    """Accept the official archive byte for byte, or any gzip packaging of the same IDX bytes."""
    if hashlib.sha256(blob).hexdigest() == f.sha256_gz:
        return
    if f.sha256_idx is not None:
        try:
            raw = gzip.decompress(blob)
        except (OSError, EOFError, zlib.error):
            raw = None
        if raw is not None and hashlib.sha256(raw).hexdigest() == f.sha256_idx:
            return
    raise DataError(f"{url}: SHA-256 does not match the known digest (corrupt or altered download)")


DOWNLOAD_MAX_BYTES = 1 << 27        # the largest file (MNIST-family training images) is ~26 MB


def download(name: str, dest=None, *, urls=None, opener=None, timeout: float = 60.0,
             progress: bool = True) -> Path:
    """Fetch the four files of ``name`` into ``dest`` (default: the cache), each checked against
    its known SHA-256 before it is renamed into place.  Files already there are kept."""
    src = SOURCES[name]
    dest = Path(dest) if dest is not None else cache_dir(name)
    opener = opener or urllib.request.urlopen
    bases = tuple(urls) if urls else src.urls
    for f in src.files.values():
        if (dest / f.name).is_file():
            continue
        errors = []
        for base in bases:
            url = base.rstrip("/") + "/" + f.name
            if progress:
                print(f"proxcl: downloading {url}", file=sys.stderr, flush=True)
            try:
                with opener(url, timeout=timeout) as resp:
                    blob = resp.read(DOWNLOAD_MAX_BYTES + 1)
            except (urllib.error.URLError, OSError, ValueError) as e:
                errors.append(f"{url}: {getattr(e, 'reason', e)}")
                continue
            if len(blob) > DOWNLOAD_MAX_BYTES:
                raise DataError(f"{url}: larger than {DOWNLOAD_MAX_BYTES} bytes, not a data set file")
            _check_digest(f, blob, url)
            atomic_write_bytes(dest / f.name, blob)
            break
        else:
            raise DataError(_missing_message(name, f" and the download failed ({errors[-1]})"))
    return dest


# ---- data sets ----------------------------------------------------------------------------------

SPLITS = ("train", "val", "test")


@dataclass
class Dataset:
    """Normalised images [N, 1, H, W] float32 and int32 labels per split; class names; the
    normalisation (training split mean and std over all pixels) so eval/predict can repeat it."""
    name: str
    class_names: tuple[str, ...]
    mean: float
    std: float
    images: dict = field(default_factory=dict)     # split -> float32 [N, 1, H, W]
    labels: dict = field(default_factory=dict)     # split -> int32 [N]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.images["train"].shape[1:])

    @property
    def normalisation(self) -> dict:
        """{"mean", "std"} of the raw 0..255 pixels: store it with a model, give it to normalise()."""
        return {"mean": self.mean, "std": self.std}

    def has_split(self, split: str) -> bool:
        return split in self.images and len(self.labels[split]) > 0

    def size(self, split: str) -> int:
        self._check_split(split)
        return int(len(self.labels[split]))

    def _check_split(self, split: str) -> None:
        if split not in self.images:
            have = ", ".join(s for s in SPLITS if s in self.images)
            hint = "; use val_split > 0 for a validation split" if split == "val" else ""
            raise DataError(f"{self.name} has no {split!r} split (it has {have}){hint}")

    def num_batches(self, split: str, batch_size: int, drop_last: bool = False) -> int:
        n = self.size(split)
        _check_batch_size(batch_size)
        return n // batch_size if drop_last else -(-n // batch_size)

    def batches(self, split: str, batch_size: int, shuffle: bool = False, seed: int = 0,
                epoch: int = 0, drop_last: bool = False):
        """Yield (images [B, 1, H, W] float32, labels [B] int32).  With shuffle, the order is a
        permutation that depends only on (seed, epoch): the same seed gives the same batches."""
        self._check_split(split)
        _check_batch_size(batch_size)
        x, y = self.images[split], self.labels[split]
        n = len(y)
        order = epoch_order(n, seed, epoch) if shuffle else None
        stop = n - n % batch_size if drop_last else n
        for i in range(0, stop, batch_size):
            if order is None:
                yield x[i:i + batch_size], y[i:i + batch_size]
            else:
                idx = order[i:i + batch_size]
                yield x[idx], y[idx]

    def normalise(self, images) -> np.ndarray:
        return normalise(images, self.mean, self.std)


def _check_batch_size(batch_size) -> None:
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError(f"batch size must be a positive integer, got {batch_size!r}")


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order of n samples for (seed, epoch), the same on every machine."""
    return np.random.Generator(np.random.PCG64([int(seed) & 0xFFFFFFFF, int(epoch) & 0xFFFFFFFF,
                                                0x5EED])).permutation(n)


def check_normalisation(norm) -> tuple[float, float]:
    """(mean, std) of a {"mean", "std"} dict (as a model file stores it): finite numbers and a
    positive std, else a one-line ValueError."""
    try:
        mean, std = float(norm["mean"]), float(norm["std"])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"normalisation must be {{'mean': float, 'std': float}}, got {norm!r}") from None
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise InputError(f"normalisation needs a finite mean and a positive std, got {mean}, {std}")
    return mean, std


def normalise(images, mean: float, std: float) -> np.ndarray:
    """Raw pixels (0..255; [H, W], [N, H, W] or [N, C, H, W]) -> float32 [N, C, H, W],
    (x - mean) / std with the training set's statistics."""
    a = np.asarray(images)
    if a.ndim == 2:
        a = a[None, None]
    elif a.ndim == 3:
        a = a[:, None]
    elif a.ndim != 4:
        raise InputError(f"images must be [H, W], [N, H, W] or [N, C, H, W], got shape {a.shape}")
    mean, std = check_normalisation({"mean": mean, "std": std})
    out = a.astype(np.float32)
    out -= np.float32(mean)
    out *= np.float32(1.0 / std)
    return out


def _stats(images: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation over all pixels (exact, from a histogram for uint8)."""
    if images.dtype == np.uint8:
        counts = np.bincount(images.ravel(), minlength=256).astype(np.float64)
        values = np.arange(256, dtype=np.float64)
        n = counts.sum()
        mean = float((counts * values).sum() / n)
        std = float(np.sqrt((counts * (values - mean) ** 2).sum() / n))
    else:
        x = images.astype(np.float64)
        mean, std = float(x.mean()), float(x.std())
    return mean, (std if std > 0 else 1.0)


def from_arrays(name: str, train_images, train_labels, test_images, test_labels, class_names,
                *, val_split: float = 0.0, seed: int = 0, normalisation: dict | None = None) -> Dataset:
    """A Dataset from raw images ([N, H, W] or [N, C, H, W], 0..255) and labels; the validation
    split (a seeded random fraction) is taken out of the training set before the statistics.
    ``normalisation`` ({"mean", "std"}, e.g. stored with a model) replaces the statistics."""
    if not 0.0 <= float(val_split) < 1.0:
        raise InputError(f"the validation split (--val-split) must be in [0, 1), got {val_split}")
    xs, ys = {}, {}
    for split, x, y in (("train", train_images, train_labels), ("test", test_images, test_labels)):
        x, y = np.asarray(x), np.asarray(y)
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4:
            raise DataError(f"{name}: {split} images must be [N, H, W] or [N, C, H, W], got {x.shape}")
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"{name}: {len(x)} {split} images but labels of shape {y.shape}")
        if len(y) and (y.min() < 0 or y.max() >= len(class_names)):
            raise DataError(f"{name}: {split} labels outside 0..{len(class_names) - 1}")
        xs[split], ys[split] = x, y.astype(np.int32)
    if xs["train"].shape[1:] != xs["test"].shape[1:]:
        raise DataError(f"{name}: train images {xs['train'].shape[1:]} and test images "
                        f"{xs['test'].shape[1:]} differ in shape")
    if len(ys["train"]) == 0:
        raise DataError(f"{name}: the training set is empty")
    if val_split > 0:
        n = len(ys["train"])
        n_val = int(round(n * float(val_split)))
        if n_val == 0 or n_val == n:
            raise InputError(f"a validation split (--val-split) of {val_split} of {n} training samples "
                             "leaves an empty split")
        perm = np.random.Generator(np.random.PCG64([int(seed) & 0xFFFFFFFF, 0x7A1])).permutation(n)
        val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        xs["val"], ys["val"] = xs["train"][val_idx], ys["train"][val_idx]
        xs["train"], ys["train"] = xs["train"][train_idx], ys["train"][train_idx]
    if normalisation is not None:
        mean, std = check_normalisation(normalisation)
    else:
        mean, std = _stats(xs["train"])
    ds = Dataset(name, tuple(class_names), mean, std)
    for split in SPLITS:
        if split in xs:
            ds.images[split] = normalise(xs[split], mean, std)
            ds.labels[split] = ys[split]
    return ds


def _load_mnist_like(name: str, folder, *, val_split: float, seed: int, download_ok: bool,
                     normalisation: dict | None) -> Dataset:
    src = SOURCES[name]
    if folder is not None:
        if not Path(folder).is_dir():
            raise DataError(f"{folder}: no such directory (from --data {name}:{folder})")
        files = find_files(name, folder)
        if files is None:
            wanted = ", ".join(f.name for f in src.files.values())
            raise DataError(f"{folder} lacks some of {wanted} (or the same names without .gz)")
    else:
        files = find_files(name)
        if files is None:
            if not download_ok:
                raise DataError(_missing_message(name, " (downloads are off)"))
            download(name)
            files = find_files(name, cache_dir(name))
            if files is None:      # pragma: no cover - download() raises first
                raise DataError(_missing_message(name, ""))
    arrays = {role: read_idx(path) for role, path in files.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        fx, fy = files[f"{split}_images"].name, files[f"{split}_labels"].name
        if x.ndim != 3 or x.dtype != np.uint8:
            raise DataError(f"{fx}: expected uint8 images [N, rows, cols], got {x.dtype} {x.shape}")
        if y.ndim != 1 or y.dtype != np.uint8:
            raise DataError(f"{fy}: expected uint8 labels [N], got {y.dtype} {y.shape}")
        if len(x) != len(y):
            raise DataError(f"{fx} has {len(x)} images but {fy} has {len(y)} labels")
    return from_arrays(name, arrays["train_images"], arrays["train_labels"], arrays["test_images"],
                       arrays["test_labels"], src.class_names, val_split=val_split, seed=seed,
                       normalisation=normalisation)


SYNTHETIC_CLASSES = tuple(f"pattern {i}" for i in range(10))
SYNTHETIC_SEED = 20190420


def synthetic_arrays(n_train: int = 2000, n_test: int | None = None, seed: int = SYNTHETIC_SEED):
    """Raw uint8 images [N, 28, 28] and labels of 10 classes: each class a smooth random pattern,
    each sample its class pattern shifted by up to 3 pixels, scaled and noised.  Learnable yet not
    trivial: with Adam, 5 epochs of 2000 samples give a linear model about 85 % test accuracy and a
    784-100-10 MLP about 90 %."""
    n_test = max(n_train // 5, 10) if n_test is None else n_test
    rng = np.random.Generator(np.random.PCG64(seed))
    yy, xx = np.mgrid[0:28, 0:28] / 27.0
    protos = []
    for _ in range(10):
        p = np.zeros((28, 28))
        for _ in range(3):          # a few Gaussian blobs and a stripe per class
            cy, cx = rng.uniform(0.2, 0.8, 2)
            s = rng.uniform(0.08, 0.2)
            p += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
        theta, freq = rng.uniform(0, np.pi), rng.uniform(2, 5)
        p += 0.5 * (1 + np.sin(2 * np.pi * freq * (np.cos(theta) * xx + np.sin(theta) * yy)))
        protos.append(p / p.max())
    protos = np.stack(protos)

    def make(n):
        y = rng.integers(0, 10, n)
        shifts = rng.integers(-3, 4, (n, 2))
        x = np.empty((n, 28, 28))
        for i in range(n):
            x[i] = np.roll(protos[y[i]], tuple(shifts[i]), axis=(0, 1))
        x *= rng.uniform(0.6, 1.0, (n, 1, 1))
        x += rng.normal(0.0, 0.4, x.shape)
        return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8), y.astype(np.uint8)

    xtr, ytr = make(n_train)
    xte, yte = make(n_test)
    return xtr, ytr, xte, yte


def _parse_int(text: str, what: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise DataError(f"{what} must be an integer, got {text!r}") from None
    if v < 10:
        raise DataError(f"{what} must be at least 10, got {v}")
    if v > 10_000_000:
        raise DataError(f"{what} must be at most 10,000,000, got {v}")
    return v


# every spec parse_spec takes, in words (its error and the command line's --help say it)
DATA_SPECS = "fashion-mnist, mnist, fashion-mnist:DIR, mnist:DIR or synthetic[:N]"


def parse_spec(spec: str | None) -> tuple[str, str | None]:
    """'fashion-mnist' | 'mnist' | 'fashion-mnist:DIR' | 'mnist:DIR' | 'synthetic[:N]' -> (name, arg)."""
    spec = (spec or "fashion-mnist").strip()
    name, sep, arg = spec.partition(":")
    name = name.strip().lower()
    if name not in (*SOURCES, "synthetic"):
        raise DataError(f"unknown data set {spec!r}: use {DATA_SPECS}")
    if sep and not arg:
        raise DataError(f"{spec!r}: nothing after ':'")
    return name, (os.path.expanduser(arg) if sep and name != "synthetic" else arg or None)


def same_source(a: str | None, b: str | None) -> bool:
    """Whether two data set specs name the same data set (fashion-mnist and fashion-mnist:DIR do;
    synthetic sets of any size do).  A spec that cannot be parsed names no known set."""
    try:
        return parse_spec(a)[0] == parse_spec(b)[0]
    except DataError:
        return False


def load_dataset(spec: str | None = "fashion-mnist", *, val_split: float = 0.0, seed: int = 0,
                 download: bool = True, normalisation: dict | None = None) -> Dataset:
    """Load a data set by spec: ``fashion-mnist`` (default), ``mnist``, ``fashion-mnist:DIR``,
    ``mnist:DIR``, or ``synthetic`` / ``synthetic:N`` (N training images, N/5 test images).
    ``val_split`` holds out that fraction of the training set (chosen by ``seed``).  The images
    are normalised with the training split's mean and std, or with ``normalisation``
    ({"mean", "std"}, as ``Dataset.normalisation`` gives and a model file stores) when given."""
    name, arg = parse_spec(spec)
    if name == "synthetic":
        n = _parse_int(arg, "synthetic:N") if arg else 2000
        xtr, ytr, xte, yte = synthetic_arrays(n)
        return from_arrays(f"synthetic:{n}", xtr, ytr, xte, yte, SYNTHETIC_CLASSES,
                           val_split=val_split, seed=seed, normalisation=normalisation)
    return _load_mnist_like(name, arg, val_split=val_split, seed=seed, download_ok=download,
                            normalisation=normalisation)


__all__ = ["DataError", "Dataset", "load_dataset", "parse_spec", "same_source", "normalise", "check_normalisation",
           "epoch_order",
           "read_idx", "parse_idx", "write_idx", "idx_bytes", "download", "find_files", "search_dirs",
           "cache_dir", "from_arrays", "synthetic_arrays", "SOURCES", "IDX_TYPES"]
