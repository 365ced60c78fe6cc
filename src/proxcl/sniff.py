"""What a file looks like, from its first bytes: for the one-line errors about a file of the wrong
kind ("not a proxcl model file: it looks like a PNG image") instead of what its bytes would mean
if they were the expected format."""

from __future__ import annotations

import io
import zipfile

# (first bytes, what a file starting with them is)
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"\x93NUMPY", "a numpy .npy array"),
    (b"\x1f\x8b", "gzip-compressed data"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file"),
    (b"%PDF", "a PDF document"),
    (b"\x7fELF", "an executable"),
)
_IDX_TYPES = (0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E)


def looks_like(data: bytes, path=None) -> str | None:
    """A short phrase for what ``data`` (a whole file, or its start) looks like, or None when it
    is nothing this knows.  Zip archives are told apart by their member names, read from ``path``
    when given, else from ``data`` (then the whole file)."""
    if not data:
        return "an empty file"
    head = bytes(data[:64])
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _zip_kind(path if path is not None else io.BytesIO(bytes(data)))
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    if head[:2] == b"BM" and head[6:10] == b"\0\0\0\0":     # its reserved bytes are zero
        return "a BMP image"
    if len(head) >= 9 and head[8:9] == b"{":
        return "a proxcl model file" if b'"format":"proxcl"' in bytes(data[:512]) else "a safetensors file"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle (an older PyTorch file?)"
    if len(head) >= 4 and head[:2] == b"\0\0" and head[2] in _IDX_TYPES and 1 <= head[3] <= 4:
        return "an IDX data file"
    if _is_text(bytes(data[:4096])):
        return "JSON text" if head.lstrip()[:1] in (b"{", b"[") else "text"
    return None


def _zip_kind(source) -> str:
    try:
        with zipfile.ZipFile(source) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):     # its directory, at the end, is missing
        return "a damaged or cut-short zip archive"
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return "a PyTorch zip archive (torch.save)"
    if names and all(n.endswith(".npy") for n in names):
        return "a proxcl training checkpoint" if "__meta__.npy" in names else "a numpy .npz archive"
    return "a zip archive"


def _is_text(chunk: bytes) -> bool:
    """UTF-8 without control characters other than tab, newlines and form feed (a character cut
    at the end of the chunk is allowed)."""
    try:
        text = chunk.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(chunk) - 3:
            return False
        text = chunk[:e.start].decode("utf-8")
    return bool(text) and all(c >= " " or c in "\t\n\r\f" for c in text)
