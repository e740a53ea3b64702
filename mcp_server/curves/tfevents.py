"""TensorBoard event files (`events.out.tfevents.*`) read raw: every scalar kept, incrementally.

What it reads. A TFRecord stream: each record is a little-endian `uint64` length, the masked
CRC-32C of those 8 bytes, the data, and the masked CRC-32C of the data. Each record's data is
one `tensorboard.Event` protobuf, decoded here by hand (no tensorflow, tensorboard or protobuf
import: the server stays light). The field numbers are those of tensorboard's `event.proto`,
`summary.proto` and `tensor.proto`:

    Event        wall_time=1 (double), step=2 (int64), summary=5
    Summary      value=1 (repeated Value)
    Value        tag=1, simple_value=2 (float), tensor=8 (TensorProto), metadata=9
    Metadata     plugin_data=1 -> PluginData plugin_name=1
    TensorProto  dtype=1, tensor_content=4, float_val=5, double_val=6, int_val=7, int64_val=10,
                 half_val=13 (float16 or bfloat16 bits)

A scalar is either an old-style `simple_value` (torch's `SummaryWriter.add_scalar`) or a one-
element tensor whose tag carries the plugin "scalars" (TF2, `tensorboard.summary.Writer`, torch
with `new_style=True`). Writers put the metadata on a tag's first value only, so the plugin of
each tag is remembered for the rest of the file. Dtypes float, double, half, bfloat16, int32 and
int64 are read, from the typed value fields or from `tensor_content`. Each scalar becomes one
point (value, step, wall time) of the series named by its tag; NaN and ±inf are kept.

What it does not read. Histograms, images, audio, text, graphs and every non-scalar tensor are
skipped by wire type without being decoded. The length CRC of each record is verified; the data
CRC is not (pure Python CRC-32C of every record would cost more than the whole parse); a record
whose data does not decode is counted in `Curves.skipped` and passed over.

Incremental. A torn last record (the writer half-way through it) is left unconsumed and read by
the next `read_new`, which starts from the remembered byte offset. A bad length CRC means a
corrupt file: reading that file stops there, counted once in `Curves.skipped`, never raised. A
file that shrank (size below the offset) was replaced: it is read again from byte 0, and the
caller is expected to have reset its `Curves` (the `Reader` protocol).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from mcp_server import safefiles
from mcp_server.curves.store import Curves

__all__ = ["TfEventsReader", "is_tfevents", "crc32c", "masked_crc32c"]

NAME_PREFIX = "events.out.tfevents."  # then <time>.<host>[.<pid>.<n>][suffix]
HEADER = 12  # uint64 length + uint32 masked CRC of the length
FOOTER = 4  # uint32 masked CRC of the data (not verified)
CHUNK = 16 << 20  # bytes read at a time: memory stays bounded on files of images
_LENGTH_CACHE_MAX = 4096  # distinct record headers whose CRC check is remembered
_TAG_CACHE_MAX = 4096  # distinct simple_value summary layouts (one per tag) remembered

_unpack_d = struct.Struct("<d").unpack_from
_unpack_f = struct.Struct("<f").unpack_from
_unpack_q = struct.Struct("<Q").unpack_from
_unpack_i = struct.Struct("<I").unpack_from


# --- CRC-32C (Castagnoli), only for the 8-byte length fields -------------------------------


def _crc32c_table() -> tuple[int, ...]:
    poly = 0x82F63B78  # Castagnoli polynomial, bit-reversed
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C of `data`, table-driven, one byte at a time (fine for short fields)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The CRC as TFRecord stores it: rotated right by 15 bits plus a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _frame_length(header: bytes) -> int:
    """The data length a 12-byte record header announces, or -1 when its CRC does not match."""
    if masked_crc32c(header[:8]) != _unpack_i(header, 8)[0]:
        return -1
    return _unpack_q(header, 0)[0]


def is_tfevents(path: str | os.PathLike[str]) -> bool:
    """True for a TensorBoard event file: by its name, else by a valid first-record header."""
    path = Path(path)
    if path.name.startswith(NAME_PREFIX):
        return True
    try:
        with safefiles.open_read(path) as f:
            header = f.read(HEADER)
    except (OSError, safefiles.NotRegular):
        return False
    return len(header) == HEADER and _frame_length(header) >= 0


# --- protobuf wire format: the few pieces an Event needs ---------------------------------


class _Malformed(Exception):
    """A record whose data is not the protobuf it should be."""


def _varint(buf: bytes, p: int, end: int) -> tuple[int, int]:
    """The unsigned varint at `p` and the position after it."""
    result = shift = 0
    while p < end:
        byte = buf[p]
        p += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, p
        shift += 7
        if shift > 63:
            break
    raise _Malformed("bad varint")


def _signed64(value: int) -> int:
    """A varint read as a two's-complement int64 (negative int32/int64 take ten bytes)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _skip(buf: bytes, p: int, end: int, wire: int) -> int:
    """The position after a field of wire type `wire` whose value starts at `p`."""
    if wire == 0:
        return _varint(buf, p, end)[1]
    if wire == 1:
        p += 8
    elif wire == 2:
        size, p = _varint(buf, p, end)
        p += size
    elif wire == 5:
        p += 4
    else:  # groups (3, 4) are not in these messages
        raise _Malformed(f"wire type {wire}")
    if p > end:
        raise _Malformed("field runs past its message")
    return p


def _fields(buf: bytes, p: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """Yield (field number, wire type, value start, value end) for each field in buf[p:end]."""
    while p < end:
        key = buf[p]
        if key < 0x80:  # one-byte key: fields 1 to 15, all this module reads
            p += 1
        else:
            key, p = _varint(buf, p, end)
        wire = key & 7
        if wire == 2:
            if p >= end:
                raise _Malformed("field runs past its message")
            size = buf[p]
            if size < 0x80:
                start = p + 1
            else:
                size, start = _varint(buf, p, end)
            p = start + size
            if p > end:
                raise _Malformed("field runs past its message")
            yield key >> 3, wire, start, p
        else:
            start, p = p, _skip(buf, p, end, wire)
            yield key >> 3, wire, start, p


# --- Event -> scalars -----------------------------------------------------------------------

_CONTENT_FORMATS = {1: "<f", 2: "<d", 19: "<e", 3: "<i", 9: "<q"}  # DT_FLOAT, DOUBLE, HALF, INT32, INT64
DT_HALF, DT_BFLOAT16 = 19, 14
# The usual scalar tensors, up to their one value: dtype, an empty shape (torch leaves it out),
# one packed float_val or double_val.
_FLOAT_TENSORS = frozenset({b"\x08\x01\x2a\x04", b"\x08\x01\x12\x00\x2a\x04"})
_DOUBLE_TENSORS = frozenset({b"\x08\x02\x32\x08", b"\x08\x02\x12\x00\x32\x08"})


def _half_bits(bits: int, dtype: int) -> float:
    """A float16 or bfloat16 value from the 16 bits TensorProto keeps in an int32."""
    bits &= 0xFFFF
    if dtype == DT_BFLOAT16:
        return struct.unpack("<f", struct.pack("<I", bits << 16))[0]
    return struct.unpack("<e", struct.pack("<H", bits))[0]


def _repeated(buf: bytes, start: int, end: int, wire: int, kind: str) -> list[float]:
    """The numbers of one repeated numeric field occurrence, packed (wire 2) or not."""
    if kind == "varint":
        if wire == 0:
            return [_signed64(_varint(buf, start, end)[0])]
        out, p = [], start
        while p < end:
            value, p = _varint(buf, p, end)
            out.append(_signed64(value))
        return out
    size = 4 if kind == "f" else 8
    if wire == 2:
        if (end - start) % size:
            raise _Malformed("packed field of odd length")
        return list(struct.unpack_from(f"<{(end - start) // size}{kind}", buf, start))
    return [struct.unpack_from(f"<{kind}", buf, start)[0]]


def _tensor_scalar(buf: bytes, p: int, end: int) -> float | None:
    """The single value of a one-element numeric TensorProto in buf[p:end], else None."""
    dtype = 0
    content: bytes | None = None
    values: list[float] = []
    halves: list[int] = []
    for field, wire, start, stop in _fields(buf, p, end):
        if field == 1 and wire == 0:
            dtype = _varint(buf, start, stop)[0]
        elif field == 4 and wire == 2:
            content = buf[start:stop]
        elif field == 5:
            values += _repeated(buf, start, stop, wire, "f")
        elif field == 6:
            values += _repeated(buf, start, stop, wire, "d")
        elif field in (7, 10):
            values += _repeated(buf, start, stop, wire, "varint")
        elif field == 13:
            halves += _repeated(buf, start, stop, wire, "varint")
    if content is not None:
        if dtype == DT_BFLOAT16 and len(content) == 2:
            return _half_bits(struct.unpack("<H", content)[0], dtype)
        fmt = _CONTENT_FORMATS.get(dtype)
        if fmt is None or len(content) != struct.calcsize(fmt):
            return None
        return float(struct.unpack(fmt, content)[0])
    if halves and not values:
        values = [_half_bits(int(h), dtype) for h in halves]
    return float(values[0]) if len(values) == 1 else None


def _plugin_name(buf: bytes, p: int, end: int) -> bytes:
    """SummaryMetadata.plugin_data.plugin_name, or b'' when there is none."""
    for field, wire, start, stop in _fields(buf, p, end):
        if field == 1 and wire == 2:
            for inner, inner_wire, name_start, name_stop in _fields(buf, start, stop):
                if inner == 1 and inner_wire == 2:
                    return buf[name_start:name_stop]
    return b""


def _value_scalar(buf: bytes, p: int, end: int, plugins: dict[bytes, bytes]) -> tuple[bytes, float] | None:
    """(tag, value) of a Summary.Value that holds a scalar, else None; learns the tag's plugin."""
    tag = b""
    simple: float | None = None
    tensor = metadata = None
    for field, wire, start, stop in _fields(buf, p, end):
        if field == 1 and wire == 2:
            tag = buf[start:stop]
        elif field == 2 and wire == 5:
            simple = _unpack_f(buf, start)[0]
        elif field == 8 and wire == 2:
            tensor = (start, stop)
        elif field == 9 and wire == 2:
            metadata = (start, stop)
    if metadata is not None and tag not in plugins:  # a tag's first metadata rules, as in tensorboard
        plugins[tag] = _plugin_name(buf, *metadata)
    if simple is not None:
        return tag, simple
    if tensor is not None and plugins.get(tag) == b"scalars":
        start, stop = tensor
        if buf[start : stop - 4] in _FLOAT_TENSORS:
            value = _unpack_f(buf, stop - 4)[0]
        elif buf[start : stop - 8] in _DOUBLE_TENSORS:
            value = _unpack_d(buf, stop - 8)[0]
        else:
            value = _tensor_scalar(buf, start, stop)
        if value is not None:
            return tag, value
    return None


def _decode_event(
    buf: bytes, p: int, end: int, plugins: dict[bytes, bytes]
) -> tuple[float, int, list[tuple[bytes, float]]]:
    """(wall time, step, scalars) of the Event in buf[p:end], any layout."""
    wall_time, step = 0.0, 0
    scalars: list[tuple[bytes, float]] = []
    for field, wire, start, stop in _fields(buf, p, end):
        if field == 1 and wire == 1:
            wall_time = _unpack_d(buf, start)[0]
        elif field == 2 and wire == 0:
            step = _signed64(_varint(buf, start, stop)[0])
        elif field == 5 and wire == 2:
            for inner, inner_wire, v_start, v_stop in _fields(buf, start, stop):
                if inner == 1 and inner_wire == 2:
                    found = _value_scalar(buf, v_start, v_stop, plugins)
                    if found is not None:
                        scalars.append(found)
    return wall_time, step, scalars


# --- the record loop ------------------------------------------------------------------------


class _Scan:
    """What one pass over a buffer found: scalars per tag (bytes) and the counts."""

    __slots__ = ("columns", "consumed", "need", "corrupt", "records", "malformed")

    def __init__(self) -> None:
        self.columns: dict[bytes, tuple[list[float], list[int], list[float]]] = {}
        self.consumed = 0  # bytes of whole records read
        self.need = 0  # bytes the first unread record needs in all (0 when unknown)
        self.corrupt = False
        self.records = 0
        self.malformed = 0


def _simple_value_tag(layout: bytes) -> bytes | None:
    """The tag when `layout` is a Summary of one Value, tag then simple_value, up to the float.

    That is `2a L 0a L 0a L <tag> 15`, each L one byte: what torch's `add_scalar` writes.
    """
    size = len(layout)
    if (
        7 <= size <= 125
        and layout[0] == 0x2A
        and layout[1] == size + 2
        and layout[2] == 0x0A
        and layout[3] == size
        and layout[4] == 0x0A
        and layout[5] == size - 7
        and layout[-1] == 0x15
    ):
        return layout[6:-1]
    return None


def _scan(
    buf: bytes, scan: _Scan, plugins: dict[bytes, bytes], tags: dict[bytes, bytes], lengths: dict[bytes, int]
) -> None:
    """Read every whole record of `buf` into `scan`; stop at a torn record or a bad length CRC.

    The hot path is inlined: torch's `add_scalar` event (wall time, optional step, a summary of
    one value with a short tag and a simple_value) is recognised by the bytes between the step
    and the float, which are the same for every event of a tag (`tags` caches them); any other
    layout goes through `_decode_event`.
    """
    n = len(buf)
    pos = 0
    columns = scan.columns
    records = malformed = 0
    unpack_d, unpack_f, frame_length = _unpack_d, _unpack_f, _frame_length
    while True:
        if pos + HEADER > n:
            scan.need = 0
            break
        header = buf[pos : pos + HEADER]
        length = lengths.get(header)
        if length is None:
            length = frame_length(header)
            if length < 0:
                scan.corrupt = True
                break
            if len(lengths) < _LENGTH_CACHE_MAX:
                lengths[header] = length
        p = pos + HEADER
        end = p + length
        if end + FOOTER > n:
            scan.need = HEADER + length + FOOTER
            break
        pos = end + FOOTER

        tag = None
        try:  # fast path: 09 <wall:8> [10 <step varint>] <summary of one simple_value> <float:4>
            if buf[p] == 0x09:
                q = p + 9
                step = 0
                if buf[q] == 0x10:
                    q += 1
                    shift = 0
                    while True:
                        byte = buf[q]
                        q += 1
                        step |= (byte & 0x7F) << shift
                        if byte < 0x80:
                            break
                        shift += 7
                    if step >= 1 << 63:
                        step -= 1 << 64
                layout = buf[q : end - 4]
                tag = tags.get(layout)
                if tag is None:
                    tag = _simple_value_tag(layout)
                    if tag is not None and len(tags) < _TAG_CACHE_MAX:
                        tags[layout] = tag
                if tag is not None:
                    value = unpack_f(buf, end - 4)[0]
                    wall_time = unpack_d(buf, p + 1)[0]
        except IndexError:
            tag = None
        if tag is not None:
            column = columns.get(tag)
            if column is None:
                column = columns[tag] = ([], [], [])
            column[0].append(value)
            column[1].append(step)
            column[2].append(wall_time)
            records += 1
            continue

        try:
            wall_time, step, scalars = _decode_event(buf, p, end, plugins)
        except (_Malformed, struct.error, IndexError):
            malformed += 1
            continue
        for tag, value in scalars:
            column = columns.get(tag)
            if column is None:
                column = columns[tag] = ([], [], [])
            column[0].append(value)
            column[1].append(step)
            column[2].append(wall_time)
        if scalars:
            records += 1
    scan.consumed = pos
    scan.records += records
    scan.malformed += malformed


class TfEventsReader:
    """Incremental reader of one TensorBoard event file (the `Reader` protocol of `store`)."""

    kind = "tfevents"

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.offset = 0  # bytes of whole records read so far
        self.corrupt = False  # a bad length CRC was met: the file is not read further
        self._plugins: dict[bytes, bytes] = {}  # tag -> plugin name, from the tag's first metadata
        self._lengths: dict[bytes, int] = {}  # record header -> data length, CRC already checked
        self._tags: dict[bytes, bytes] = {}  # simple_value summary bytes -> tag (see _scan)

    def _restart(self) -> None:
        self.offset = 0
        self.corrupt = False
        self._plugins.clear()

    def read_new(self, curves: Curves) -> int:
        """Add the scalars of the records appended since the last call; return bytes consumed."""
        source = f"{self.kind}: {self.path}"
        if source not in curves.sources:
            curves.sources.append(source)
        try:
            size = self.path.stat().st_size
        except OSError:
            return 0
        if size < self.offset:
            self._restart()
        if self.corrupt or size - self.offset < HEADER + FOOTER:
            return 0
        start = self.offset
        scan = _Scan()
        try:
            with safefiles.open_read(self.path) as f:
                self._read_region(f, size, scan)
        except (OSError, safefiles.NotRegular):
            pass  # vanished or unreadable between stat and read: keep what was read
        if scan.corrupt:
            self.corrupt = True
            curves.skipped += 1
        curves.skipped += scan.malformed
        curves.records += scan.records
        for tag, (values, steps, times) in scan.columns.items():
            curves.get(tag.decode("utf-8", "replace")).extend(values, steps, None, times)
        return self.offset - start

    def _read_region(self, f: BinaryIO, size: int, scan: _Scan) -> None:
        """Scan [offset, size) in chunks; a record longer than a chunk is read in one piece."""
        need = 0
        while not scan.corrupt:
            available = size - self.offset
            if available < max(need, HEADER + FOOTER):
                return
            want = min(available, max(CHUNK, need))
            f.seek(self.offset)
            buf = f.read(want)
            _scan(buf, scan, self._plugins, self._tags, self._lengths)
            self.offset += scan.consumed
            need = scan.need
            if len(buf) < want:  # the file changed under us: the next call sees it whole
                return
