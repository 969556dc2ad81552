"""A PNG heatmap writer with no plotting dependency: enough to show per-(layer, head) indirect effects."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Sequence

import torch

from fv.io import write_bytes

_DIGITS = {  # 3x5 glyphs for panel labels
    "S": ["111", "100", "111", "001", "111"], "R": ["110", "101", "110", "101", "101"], "C": ["111", "100", "100", "100", "111"],
    "F": ["111", "100", "110", "100", "100"], "V": ["101", "101", "101", "101", "010"], "D": ["110", "101", "101", "101", "110"],
    "I": ["111", "010", "010", "010", "111"], " ": ["000"] * 5, "|": ["010"] * 5,
}


def _color(v: float, vmax: float, diverging: bool) -> tuple[int, int, int]:
    if vmax <= 0:
        return (255, 255, 255)
    t = max(-1.0, min(1.0, v / vmax))
    if diverging:
        if t >= 0:
            return (255, int(255 * (1 - t)), int(255 * (1 - t)))
        return (int(255 * (1 + t)), int(255 * (1 + t)), 255)
    t = abs(t)
    return (int(255 * (1 - t)), int(255 * (1 - 0.6 * t)), int(255 * (1 - 0.2 * t)))


def _png(pixels: list[list[tuple[int, int, int]]]) -> bytes:
    h, w = len(pixels), len(pixels[0])
    raw = b"".join(b"\x00" + bytes(c for px in row for c in px) for row in pixels)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def write_heatmaps(path: str | Path, panels: Sequence[tuple[str, torch.Tensor, bool]], cell: int = 14) -> Path:
    """Panels side by side, each a (layers x heads) grid: rows are layers, columns heads.
    ``(label, values, diverging)``: diverging panels are red above zero and blue below; each panel has its own scale."""
    rows, cols = panels[0][1].shape
    pad, label_h = 10, 14
    pw = cols * cell
    width = pad + len(panels) * (pw + pad)
    height = label_h + rows * cell + pad * 2
    img = [[(255, 255, 255)] * width for _ in range(height)]
    for k, (label, vals, div) in enumerate(panels):
        x0 = pad + k * (pw + pad)
        vmax = float(vals.abs().max()) if vals.numel() else 0.0
        for r in range(rows):
            for c in range(cols):
                col = _color(float(vals[r, c]), vmax, div)
                for y in range(pad + label_h + r * cell, pad + label_h + (r + 1) * cell - 1):
                    for x in range(x0 + c * cell, x0 + (c + 1) * cell - 1):
                        img[y][x] = col
        for i, ch in enumerate(label.upper()[:12]):
            glyph = _DIGITS.get(ch, _DIGITS[" "])
            for gy, line in enumerate(glyph):
                for gx, bit in enumerate(line):
                    if bit == "1":
                        for sy in range(2):
                            for sx in range(2):
                                img[pad // 2 + gy * 2 + sy][x0 + i * 8 + gx * 2 + sx] = (0, 0, 0)
    return write_bytes(path, _png(img))
