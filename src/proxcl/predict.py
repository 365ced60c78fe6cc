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
        raise FileNotFoundError(f"{path}: no such file")
    kind = _kind(path)
    if kind == "png":
        try:
            from PIL import Image
        except ImportError:
            raise InputError("reading PNG needs Pillow: pip install 'proxcl[report]'") from None
        try:
            with Image.open(path) as im:
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
    if a.ndim != 4 or a.size == 0:
        raise InputError(f"{path}: expected images [H, W], [N, H, W] or [N, C, H, W], got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.number):
        raise InputError(f"{path}: images must be numbers, got {a.dtype}")
    return a.astype(np.float32)


def _kind(path: str) -> str:
    """png, npy or idx: by the name's ending, else by the first bytes; a file that is plainly
    none of them says what it looks like."""
    from .sniff import looks_like
    lower = path.lower()
    if lower.endswith((".png", ".npy")):
        return lower[-3:]
    with open(path, "rb") as f:
        what = looks_like(f.read(4096), path)
    kinds = {"a PNG image": "png", "a numpy .npy array": "npy", "an IDX data file": "idx",
             "gzip-compressed data": "idx", None: "idx"}
    if what not in kinds:
        raise InputError(f"{path}: not a PNG, .npy or IDX image file: it looks like {what}")
    return kinds[what]


def predict_files(model, paths: list[str], normalisation: dict, class_names=None) -> list[dict]:
    """For every image of every file: {"file", "index", "class", "label", "probability"}."""
    from .data import normalise
    want = tuple(model.input_shape)
    out = []
    for path in paths:
        raw = read_images(path)
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
