"""Depth from OpenEXR files without OpenEXR: scanline images, NONE / RLE / ZIPS / ZIP compression.

Why here: the pinned ``opencv-python-headless`` wheel is built without OpenEXR, and EXR is how
renderers and some recorders store float depth. Scanline files with the lossless compressions
above cover what Blender and most tools write by default; tiled, deep, multi-part and the
wavelet / lossy codecs (PIZ, PXR24, B44, DWA) are refused with a message saying so. Written from
the OpenEXR file layout documentation (https://openexr.com/en/latest/OpenEXRFileLayout.html).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

MAGIC = 20000630
COMPRESSIONS = {0: "NONE", 1: "RLE", 2: "ZIPS", 3: "ZIP", 4: "PIZ", 5: "PXR24", 6: "B44",
                7: "B44A", 8: "DWAA", 9: "DWAB"}
LINES_PER_CHUNK = {0: 1, 1: 1, 2: 1, 3: 16}
PIXEL_TYPES = {0: np.dtype("<u4"), 1: np.dtype("<f2"), 2: np.dtype("<f4")}
DEPTH_CHANNELS = ("Z", "depth", "D", "Y", "R", "V")  # first present is the depth


class ExrError(ValueError):
    """An EXR file this reader cannot decode; the message names the file and why."""


def _cstring(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(b"\0", pos)
    return data[pos:end].decode("latin-1"), end + 1


def _header(data: bytes, path: Path) -> tuple[dict, int]:
    attrs: dict = {}
    pos = 8
    while data[pos] != 0:
        name, pos = _cstring(data, pos)
        kind, pos = _cstring(data, pos)
        (size,) = struct.unpack_from("<i", data, pos)
        pos += 4
        attrs[name] = (kind, data[pos: pos + size])
        pos += size
    return attrs, pos + 1


def _channels(raw: bytes) -> list[tuple[str, int, int, int]]:
    out, pos = [], 0
    while raw[pos] != 0:
        name, pos = _cstring(raw, pos)
        ptype, _, xs, ys = struct.unpack_from("<iB3xii", raw, pos)
        pos += 16
        out.append((name, ptype, xs, ys))
    return out


def _undo_predictor(data: bytes) -> bytes:
    """ZIP/RLE store byte differences (+128) of two interleaved halves: undo both."""
    t = np.frombuffer(data, np.uint8).astype(np.int64)
    t = ((np.cumsum(t - 128) + 128) % 256).astype(np.uint8)  # t[i] = t[i-1] + t[i] - 128
    half = (len(t) + 1) // 2
    out = np.empty_like(t)
    out[0::2] = t[:half]
    out[1::2] = t[half:]
    return out.tobytes()


def _unrle(data: bytes) -> bytes:
    out, pos = bytearray(), 0
    while pos < len(data):
        count = struct.unpack_from("<b", data, pos)[0]
        pos += 1
        if count < 0:
            out += data[pos: pos - count]
            pos -= count
        else:
            out += data[pos: pos + 1] * (count + 1)
            pos += 1
    return bytes(out)


def read_exr_depth(path: str | Path) -> np.ndarray:
    """(H, W) float32 from the depth channel (``Z``, ``depth``, ``D``, ``Y``, ``R``, ``V``,
    else the only channel) of a scanline EXR file."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) < 8 or struct.unpack_from("<i", data)[0] != MAGIC:
        raise ExrError(f"{path}: not an OpenEXR file (no EXR magic number)")
    flags = struct.unpack_from("<i", data, 4)[0]
    if flags & (0x200 | 0x800 | 0x1000):  # tiled, deep, multi-part (long names are fine)
        raise ExrError(f"{path}: tiled, deep or multi-part EXR files are not supported "
                       "(save depth as a scanline EXR, a 16-bit PNG or a .npy)")
    try:
        attrs, pos = _header(data, path)
        channels = _channels(attrs["channels"][1])
        compression = attrs["compression"][1][0]
        x0, y0, x1, y1 = struct.unpack("<4i", attrs["dataWindow"][1])
    except (KeyError, ValueError, IndexError, struct.error) as err:
        raise ExrError(f"{path}: malformed EXR header ({err})") from err
    if compression not in LINES_PER_CHUNK:
        raise ExrError(f"{path}: EXR compression {COMPRESSIONS.get(compression, compression)} "
                       "is not supported here (NONE, RLE, ZIPS and ZIP are): re-save it with "
                       "one of those, or as a 16-bit PNG / .npy")
    if any(xs != 1 or ys != 1 for _, _, xs, ys in channels):
        raise ExrError(f"{path}: sub-sampled channels are not supported")
    width, height = x1 - x0 + 1, y1 - y0 + 1
    names = [c[0] for c in channels]
    pick = next((n for n in DEPTH_CHANNELS if n in names), names[0] if len(names) == 1 else None)
    if pick is None:
        raise ExrError(f"{path}: no depth channel among {names} (expected one of "
                       f"{', '.join(DEPTH_CHANNELS)})")
    lines = LINES_PER_CHUNK[compression]
    n_chunks = (height + lines - 1) // lines
    offsets = struct.unpack_from(f"<{n_chunks}Q", data, pos)
    row_bytes = sum(PIXEL_TYPES[t].itemsize for _, t, _, _ in channels) * width
    out = np.empty((height, width), np.float32)
    for offset in offsets:
        try:
            y, size = struct.unpack_from("<ii", data, offset)
            block = data[offset + 8: offset + 8 + size]
            rows = min(lines, y1 - y + 1)
            expected = rows * row_bytes
            if len(block) != size:
                raise ExrError(f"{path}: the chunk at byte {offset} is cut short")
            if size < expected:  # stored compressed (else raw: compressing did not pay)
                block = _undo_predictor(zlib.decompress(block) if compression in (2, 3)
                                        else _unrle(block)) if compression else block
            if len(block) != expected:
                raise ExrError(f"{path}: the chunk of line {y} holds {len(block)} bytes, "
                               f"expected {expected}")
        except (struct.error, zlib.error) as err:
            raise ExrError(f"{path}: corrupt chunk at byte {offset} ({err})") from err
        for row in range(rows):  # a row: each channel's values in turn, channels sorted
            at = row * row_bytes
            for name, ptype, _, _ in channels:
                dtype = PIXEL_TYPES[ptype]
                if name == pick:
                    out[y - y0 + row] = np.frombuffer(block, dtype, width, at)
                at += dtype.itemsize * width
    return out
