"""Makes damaged and forged .rbln files with a valid footer and checksum, so the tests reach
the reader's structural and semantic checks rather than stopping at the CRC."""

from __future__ import annotations

import struct
import zlib
from typing import Callable

from rblnc.format import rbln_generated as fb
from rblnc.format.artifact import ALIGNMENT, FOOTER_MAGIC
from rblnc.format.writer import FOOTER, _pack


def align(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def split(data: bytes) -> tuple[bytes, bytes]:
    """(the FlatBuffer, the data section) of a valid file."""
    fb_size = FOOTER.unpack_from(data, len(data) - FOOTER.size)[0]
    return data[:fb_size], data[align(fb_size): len(data) - FOOTER.size]


def assemble(flatbuffer: bytes, section: bytes) -> bytes:
    """FlatBuffer, padding, data section and a footer whose CRC matches, as the writer lays it out."""
    body = flatbuffer + b"\0" * (align(len(flatbuffer)) - len(flatbuffer)) + section
    body += struct.pack("<Q", len(flatbuffer))
    return body + struct.pack("<I4s", zlib.crc32(body), FOOTER_MAGIC)


def fix_crc(data: bytes | bytearray) -> bytes:
    """The same bytes with the footer's checksum recomputed (the footer itself untouched)."""
    data = bytearray(data)
    crc = zlib.crc32(bytes(data[: len(data) - FOOTER.size + 8]))
    struct.pack_into("<I", data, len(data) - 8, crc)
    return bytes(data)


def unpack(data: bytes) -> fb.ModelT:
    flatbuffer, _ = split(data)
    return fb.ModelT.InitFromObj(fb.Model.GetRootAs(flatbuffer, 0))


def repack(data: bytes, mutate: Callable[[fb.ModelT], None] | None = None,
           mutate_buffers: Callable[[fb.ModelT, int], None] | None = None) -> bytes:
    """Unpack a valid file with the object API, change it, pack it again with the data section
    moved to follow the new FlatBuffer. `mutate_buffers(model, data_start)` runs after the
    buffer offsets are fixed up, to forge them."""
    flatbuffer, section = split(data)
    model = fb.ModelT.InitFromObj(fb.Model.GetRootAs(flatbuffer, 0))
    old_start = align(len(flatbuffer))
    if mutate:
        mutate(model)
    new_start = align(len(_pack(model)))
    for buffer in (model.buffers or [])[1:]:
        buffer.offset += new_start - old_start
    if mutate_buffers:
        mutate_buffers(model, new_start)
    packed = _pack(model)
    assert align(len(packed)) == new_start, "buffer offsets changed the FlatBuffer's size"
    return assemble(packed, section)


def field_position(table, slot: int) -> int:
    """Absolute position of a present field of a generated table accessor (vtable slot `slot`)."""
    offset = table._tab.Offset(4 + 2 * slot)
    assert offset, f"field in slot {slot} is absent"
    return table._tab.Pos + offset


def offset_target(data: bytes, position: int) -> int:
    return position + struct.unpack_from("<I", data, position)[0]


def patch(data: bytes, position: int, fmt: str, value) -> bytes:
    """Write one value into the FlatBuffer and recompute the checksum."""
    out = bytearray(data)
    struct.pack_into(fmt, out, position, value)
    return fix_crc(out)


def root(data: bytes) -> fb.Model:
    flatbuffer, _ = split(data)
    return fb.Model.GetRootAs(flatbuffer, 0)
