"""Reading images for prediction: PNG, .npy and IDX files -> raw pixel arrays [N, C, H, W]."""

from __future__ import annotations

import os

import numpy as np

from .errors import InputError


def read_images(path: str) -> np.ndarray:
    """Raw images from one file: a PNG (one image; needs Pillow, installed with proxcl[report]),
    a .npy array ([H, W], [N, H, W] or [N, C, H, W]) or an IDX image file (raw or .gz)."""
    if os.path.isdir(path):
        raise InputError(f"{path}: is a directory, not an image file")
    if not os.path.isfile(path):
        if os.path.exists(path):
            raise InputError(f"{path}: not a regular file")
        raise FileNotFoundError(f"{path}: no such file")
    kind = _kind(path)
    if kind == "png":
        try:
            from PIL import Image
        except ImportError:
            raise InputError("reading PNG needs Pillow: pip install 'proxcl[report]'") from None
        try:
            with Image.open(path) as im:
                if im.mode in ("I", "I;16", "I;16B", "I;16L"):      # 16-bit grey: scaled to 0..255
                    a = np.asarray(im, dtype=np.float32) * np.float32(255 / 65535)
                else:
                    a = np.asarray(im.convert("L"), dtype=np.float32)
        except OSError as e:
            raise InputError(f"{path}: not a readable PNG ({e})") from None
        return a[None, None]
    if kind == "npy":
        try:
            a = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise InputError(f"{path}: not a readable .npy array ({str(e).splitlines()[0]})") from None
    else:
        from .data import read_idx
        a = read_idx(path)
    if a.ndim == 2:
        a = a[None, None]
    elif a.ndim == 3:
        a = a[:, None]
    if a.ndim == 4 and a.size == 0:
        raise InputError(f"{path}: holds no images (shape {a.shape})")
    if a.ndim != 4:
        raise InputError(f"{path}: expected images [H, W], [N, H, W] or [N, C, H, W], got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise InputError(f"{path}: images must be numbers, got {a.dtype}")
    if not np.all(np.isfinite(a)):
        raise InputError(f"{path}: the images hold NaN or infinite values")
    lo, hi = float(a.min()), float(a.max())
    if lo < 0 or hi > 255:
        raise InputError(f"{path}: pixel values from {lo:g} to {hi:g}; raw pixels 0..255 are expected "
                         "(proxcl normalises them as it did in training)")
    return a.astype(np.float32)


def scale_warning(path: str, raw: np.ndarray) -> str | None:
    """A note for images whose pixels all lie in 0..1 (some above 0): most likely scaled already,
    where raw 0..255 pixels are expected."""
    hi = float(raw.max())
    if 0 < hi <= 1:
        return (f"{path}: every pixel is between 0 and 1; raw pixels 0..255 are expected "
                "(scaled images are normalised again and predicted wrongly)")
    return None


def _kind(path: str) -> str:
    """png, npy or idx: by the name's ending, else by the first bytes; a file that is plainly
    none of them says what it looks like."""
    from .sniff import looks_like
    lower = path.lower()
    with open(path, "rb") as f:
        what = looks_like(f.read(4096), path)
    kinds = {"a PNG image": "png", "a numpy .npy array": "npy", "an IDX data file": "idx",
             "gzip-compressed data": "idx"}
    if what in kinds:
        return kinds[what]
    if what is not None:
        raise InputError(f"{path}: not a PNG, .npy or IDX image file: it looks like {what}")
    return lower[-3:] if lower.endswith((".png", ".npy")) else "idx"


def predict_files(model, paths: list[str], normalisation: dict, class_names=None, warn=None) -> list[dict]:
    """For every image of every file: {"file", "index", "class", "label", "probability"};
    ``warn(line)`` is told of files whose pixels look scaled already (:func:`scale_warning`)."""
    from .data import normalise
    want = tuple(model.input_shape)
    out = []
    for path in paths:
        raw = read_images(path)
        note = scale_warning(path, raw)
        if note and warn:
            warn(note)
        if tuple(raw.shape[1:]) != want:
            raise InputError(f"{path}: images are {list(raw.shape[1:])}, the model takes {list(want)}")
        x = normalise(raw, normalisation["mean"], normalisation["std"])
        probs = model.predict_proba(x)
        for i, p in enumerate(probs):
            k = int(np.argmax(p))
            out.append({"file": path, "index": i, "class": k,
                        "label": class_names[k] if class_names and k < len(class_names) else str(k),
                        "probability": float(p[k])})
    return out
