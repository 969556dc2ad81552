"""Reading and writing files so that nothing half-written is ever left on disk.

Every artifact goes through a temporary file in the destination folder and an ``os.replace``: a killed run
leaves either the old file or the new one, never a truncated one that a resumed run would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from fv.errors import FVError

_UMASK = os.umask(0)
os.umask(_UMASK)


def ensure_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and parents) or fail with a message that names it."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FVError(f"cannot create output folder {p}: {exc.strerror}. Choose a writable --out path.") from exc
    if not os.access(p, os.W_OK):
        raise FVError(f"output folder {p} is not writable. Choose a writable --out path.")
    return p


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], binary: bool = False) -> Path:
    """Call ``write(fileobj)`` on a temp file beside ``path``, then rename it into place."""
    dest = Path(path)
    ensure_dir(dest.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode a plain open() would
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return dest


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON atomically, UTF-8, indented, with a trailing newline."""
    text = json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n"
    return atomic_write(path, lambda fh: fh.write(text))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda fh: fh.write(text))


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda fh: fh.write(data), binary=True)


def _json_default(o: Any) -> Any:
    # numpy scalars and tensors that slipped through: make them plain numbers, never strings.
    if hasattr(o, "item") and getattr(o, "ndim", 0) == 0:
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"cannot write {type(o).__name__} as JSON")


_WIDE_BOMS = (  # longest first: the UTF-32 LE mark starts with the UTF-16 LE one
    (b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"),
)


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def decode_text(data: bytes, where: str) -> str:
    """UTF-8 text, with or without a BOM; UTF-16/32 and binary bytes refused in one line that says which.

    Every text input (trials, datasets, relation CSVs, dumps) goes through here, so an encoding problem is
    reported the same way everywhere instead of as a UnicodeDecodeError or a csv "line contains NUL".
    """
    for bom, name in _WIDE_BOMS:
        if data.startswith(bom):
            raise FVError(f"{where} is {name} text (byte-order mark {bom.hex(' ').upper()}); fv reads UTF-8 only. Save it as UTF-8.")
    nul = data.find(b"\x00")
    if nul >= 0:
        hint = "UTF-16 without a byte-order mark" if data[1::2].count(0) > len(data) // 4 else "binary data"
        raise FVError(f"{where} holds a NUL byte at offset {nul} (line {_line_of(data, nul)}): {hint}, not UTF-8 text. Save it as UTF-8.")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = data[exc.start:exc.start + 1].hex().upper()
        raise FVError(f"{where} is not UTF-8: byte 0x{bad} at offset {exc.start} (line {_line_of(data, exc.start)}) "
                      f"cannot be decoded ({exc.reason}). Save it as UTF-8.") from None


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """A text file decoded by ``decode_text``; a missing file or a folder is an FVError that names it."""
    p = Path(path)
    if not p.is_file():
        raise FVError(f"{what} not found: {p}. Check the path.")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise FVError(f"cannot read {what} {p}: {exc.strerror}.") from None
    return decode_text(data, f"{what} {p}")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Load JSON (UTF-8, BOM allowed), turning a missing file, a bad encoding or a syntax error into one FVError line."""
    p = Path(path)
    text = read_text(p, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        cut = " (the file ends early: truncated?)" if exc.pos >= len(text.rstrip()) else ""
        raise FVError(f"{what} {p} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}){cut}.") from None
    except RecursionError:
        raise FVError(f"{what} {p} nests too deeply to be read as JSON.") from None


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_tensors(path: str | os.PathLike, tensors: dict) -> Path:
    """Save tensors with torch.save (the reference's .pt format), atomically."""
    import torch

    return atomic_write(path, lambda fh: torch.save(tensors, fh), binary=True)


def load_tensor_file(path: str | os.PathLike) -> Any:
    """Load a .pt file without running code in it (weights_only=True), whatever the file holds."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise FVError(f"tensor file not found: {p}.")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a bad or unsafe file
        raise FVError(f"cannot load {p} as tensors with weights_only=True: {exc}") from exc
