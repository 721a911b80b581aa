"""rosbag2 recordings (``.db3`` / ``.mcap``) read with ``rosbags``, without a ROS install.

What a user's recording may be, and what is done about it:

- a bag directory with ``metadata.yaml``, or a bare ``.db3`` / ``.mcap`` file: read through
  ``rosbags.rosbag2.Reader``;
- a directory whose ``metadata.yaml`` is missing or broken (``ros2 bag record`` killed before it
  wrote it): its storage files are read one by one;
- an ``.mcap`` cut short (recorder killed: no summary, no end magic, a partial last record):
  scanned record by record from the start (MCAP spec: https://mcap.dev/spec), everything up to
  the cut is kept;
- a ``.db3`` whose pages are damaged: its rows are read in stored order until the first bad page;
- a read error in the middle of a bag: the messages before it are kept.

Every fallback is reported through ``problem(where, message)`` so the user learns what was lost.
"""

from __future__ import annotations

import sqlite3
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

MCAP_MAGIC = b"\x89MCAP0\r\n"
OP_SCHEMA, OP_CHANNEL, OP_MESSAGE, OP_CHUNK = 0x03, 0x04, 0x05, 0x06
STORAGE_SUFFIXES = (".db3", ".mcap")


class BagError(RuntimeError):
    """A recording that cannot be read at all; the message names the path."""


@dataclass
class BagRecord:
    """One serialized message: topic, ROS type name (``sensor_msgs/msg/Image``), log time."""

    topic: str
    msgtype: str
    log_ns: int
    raw: bytes | memoryview


Problem = Callable[[str, str], None]


def is_bag(path: Path) -> bool:
    """A storage file, or a directory holding ``metadata.yaml`` or a storage file."""
    path = Path(path)
    if path.is_file():
        return path.suffix in STORAGE_SUFFIXES
    return path.is_dir() and ((path / "metadata.yaml").is_file() or bool(storage_files(path)))


def storage_files(path: Path) -> list[Path]:
    path = Path(path)
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.suffix in STORAGE_SUFFIXES)


def read_bag(path: Path, problem: Problem) -> Iterator[BagRecord]:
    """All messages of the recording at ``path`` in stored order, with the fallbacks above."""
    from rosbags.rosbag2 import Reader

    path = Path(path)
    if not path.exists():
        raise BagError(f"bag {path} does not exist")
    try:
        reader = Reader(path)
        reader.open()
    except Exception as err:  # noqa: BLE001 - any failure to open: try the storage files
        files = storage_files(path) if path.is_dir() else [path]
        files = [f for f in files if f.suffix in STORAGE_SUFFIXES]
        if not files:
            raise BagError(f"bag {path} cannot be read ({err}) and holds no .db3/.mcap file") \
                from err
        if path.is_dir() and files != [path]:
            problem(str(path), f"cannot be opened as a recording ({err}); reading its storage "
                    f"files {[f.name for f in files]} directly")
            for f in files:
                yield from _read_storage_file(f, problem)
        else:
            yield from _salvage(path, err, problem)
        return
    count, last = 0, None
    try:
        for conn, log_ns, raw in reader.messages():
            yield BagRecord(conn.topic, conn.msgtype, log_ns, raw)
            count, last = count + 1, log_ns
    except Exception as err:  # noqa: BLE001 - a read error mid-bag: keep what came before
        problem(str(path), f"reading stopped after {count} messages (last log time {last}): "
                f"{type(err).__name__}: {err}; the bag is truncated or corrupt, the messages "
                "before the damage are used")
    finally:
        reader.close()


def _read_storage_file(path: Path, problem: Problem) -> Iterator[BagRecord]:
    from rosbags.rosbag2 import Reader

    try:
        reader = Reader(path)
        reader.open()
    except Exception as err:  # noqa: BLE001
        yield from _salvage(path, err, problem)
        return
    count = 0
    try:
        for conn, log_ns, raw in reader.messages():
            yield BagRecord(conn.topic, conn.msgtype, log_ns, raw)
            count += 1
    except Exception as err:  # noqa: BLE001
        problem(str(path), f"reading stopped after {count} messages: {type(err).__name__}: "
                f"{err}; the messages before the damage are used")
    finally:
        reader.close()


def _salvage(path: Path, open_error: Exception, problem: Problem) -> Iterator[BagRecord]:
    reader = {".mcap": scan_mcap, ".db3": scan_sqlite}.get(path.suffix)
    if reader is None:
        raise BagError(f"bag {path} cannot be read: {open_error}")
    problem(str(path), f"cannot be opened normally ({open_error}); reading it record by "
            "record, the messages before the damage are kept")
    yield from reader(path, problem)


# ---------------------------------------------------------------------------- MCAP scan


class _Truncated(Exception):
    pass


class _Cursor:
    """Little-endian field reader over a bytes buffer (MCAP's primitive types)."""

    def __init__(self, data: bytes | memoryview, pos: int = 0) -> None:
        self.data, self.pos = data, pos

    def take(self, n: int) -> bytes | memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise _Truncated(f"needs {n} bytes at offset {self.pos}, has "
                             f"{len(self.data) - self.pos}")
        out = self.data[self.pos: self.pos + n]
        self.pos += n
        return out

    def u16(self) -> int:
        return struct.unpack("<H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def string(self) -> str:
        return bytes(self.take(self.u32())).decode("utf-8")


def _decompress(data: bytes | memoryview, compression: str, size: int) -> bytes | memoryview:
    if compression == "":
        return data
    if compression == "lz4":
        from lz4.frame import decompress

        return decompress(bytes(data))
    if compression == "zstd":
        try:
            from compression import zstd  # Python >= 3.14
        except ImportError:
            from backports import zstd
        return zstd.decompress(bytes(data))
    raise ValueError(f"unknown MCAP chunk compression {compression!r}")


def scan_mcap(path: Path, problem: Problem) -> Iterator[BagRecord]:
    """Messages of an MCAP file read front to back, not trusting its summary or footer."""
    data = memoryview(Path(path).read_bytes())
    if bytes(data[:8]) != MCAP_MAGIC:
        raise BagError(f"{path} is not an MCAP file (no MCAP magic at its start)")
    schemas: dict[int, str] = {}
    channels: dict[int, tuple[str, str]] = {}
    cur = _Cursor(data, 8)
    count = 0
    record_at = [8]  # file offset of the top-level record being read

    def records(buf: _Cursor, end: int) -> Iterator[tuple[int, _Cursor, int]]:
        while buf.pos < end:
            if buf is cur:
                record_at[0] = buf.pos
            op = buf.take(1)[0]
            length = buf.u64()
            if op == OP_CHUNK and buf.pos + length > len(buf.data):
                # The file ends inside this chunk: hand over what is there (scanned above).
                yield op, _Cursor(buf.take(len(buf.data) - buf.pos)), length
                raise _Truncated(f"the file ends inside a chunk of {length} bytes")
            body = _Cursor(buf.take(length))
            yield op, body, length

    def handle(op: int, body: _Cursor) -> BagRecord | None:
        if op == OP_SCHEMA:
            sid = body.u16()
            schemas[sid] = body.string()
        elif op == OP_CHANNEL:
            cid, sid = body.u16(), body.u16()
            channels[cid] = (body.string(), schemas.get(sid, ""))
        elif op == OP_MESSAGE:
            cid = body.u16()
            body.u32()  # sequence
            log_ns = body.u64()
            body.u64()  # publish time
            if cid in channels:
                topic, msgtype = channels[cid]
                return BagRecord(topic, msgtype, log_ns, body.data[body.pos:])
        return None

    try:
        for op, body, _ in records(cur, len(data)):
            if op == OP_CHUNK:
                body.u64(), body.u64()  # start / end time
                size = body.u64()
                body.u32()  # crc
                compression = body.string()
                stored = body.u64()
                cut = stored > len(body.data) - body.pos
                if cut and compression:
                    raise _Truncated(f"the last {compression} chunk is cut short")
                # An uncompressed chunk cut short still holds whole messages before the cut.
                part = body.data[body.pos: body.pos + stored]
                inner = _decompress(part, compression, size)
                for iop, ibody, _ in records(_Cursor(inner), len(inner)):
                    rec = handle(iop, ibody)
                    if rec is not None:
                        count += 1
                        yield rec
            else:
                rec = handle(op, body)
                if rec is not None:
                    count += 1
                    yield rec
    except (_Truncated, ValueError, UnicodeDecodeError, struct.error, RuntimeError) as err:
        problem(str(path), f"MCAP data ends or breaks in the record at byte {record_at[0]} "
                f"of {len(data)} ({err}); the {count} messages before were read")


# ---------------------------------------------------------------------------- SQLite scan


def scan_sqlite(path: Path, problem: Problem) -> Iterator[BagRecord]:
    """Rows of a rosbag2 SQLite file in stored order, up to the first unreadable page."""
    count = 0
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as err:
        raise BagError(f"{path}: cannot open as SQLite: {err}") from err
    try:
        try:
            topics = {tid: (name, typ) for tid, name, typ in
                      con.execute("SELECT id, name, type FROM topics")}
        except sqlite3.Error as err:
            raise BagError(f"{path}: its topics table cannot be read ({err}): nothing to "
                           "recover") from err
        try:
            for tid, log_ns, raw in con.execute(
                "SELECT topic_id, timestamp, data FROM messages"
            ):
                if tid in topics:
                    count += 1
                    yield BagRecord(topics[tid][0], topics[tid][1], int(log_ns), raw)
        except sqlite3.Error as err:
            problem(str(path), f"SQLite rows end at a damaged page ({err}); {count} messages "
                    "before it were read")
    finally:
        con.close()
