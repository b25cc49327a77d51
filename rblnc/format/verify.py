"""Structural verifier of the .rbln FlatBuffer, run before any generated accessor reads it.

Every offset, vtable, field, string and vector must lie inside the buffer. The Python flatbuffers package has no verifier, and its generated accessors read whatever an
offset points at (struct.error, IndexError, or a forged vector length that loops for minutes).
This module walks the buffer from the root table the way the C++ `flatbuffers::Verifier` does,
using a description of the tables parsed from `schemas/rbln.fbs` itself, so a field appended
to the schema is verified without anyone touching this file.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

# schemas/ installs as the package rblnc.schemas (pyproject.toml), in a wheel as in a checkout.
SCHEMA_PATH = Path(str(importlib.resources.files("rblnc.schemas").joinpath("rbln.fbs")))

# The C++ verifier's defaults: nesting depth and a cap on objects (tables, vectors, strings).
MAX_DEPTH = 64
# A FlatBuffer cannot hold more distinct objects than 4-byte words; more visits than that
# means offsets are shared, which our writer never does and a forger does to make us loop.
OBJECT_BYTES = 4
# FlatBuffers offsets are 32-bit: a single FlatBuffer is smaller than 2 GiB.
MAX_FLATBUFFER_SIZE = 2**31 - 1

SCALARS: dict[str, tuple[int, str]] = {  # name -> (bytes, struct format)
    "bool": (1, "?"), "byte": (1, "b"), "ubyte": (1, "B"), "int8": (1, "b"), "uint8": (1, "B"),
    "short": (2, "h"), "ushort": (2, "H"), "int16": (2, "h"), "uint16": (2, "H"),
    "int": (4, "i"), "uint": (4, "I"), "int32": (4, "i"), "uint32": (4, "I"), "float": (4, "f"),
    "float32": (4, "f"), "long": (8, "q"), "ulong": (8, "Q"), "int64": (8, "q"),
    "uint64": (8, "Q"), "double": (8, "d"), "float64": (8, "d"),
}
_U8, _U16, _I32, _U32 = (struct.Struct(f) for f in ("<B", "<H", "<i", "<I"))


class SchemaError(Exception):
    """schemas/rbln.fbs uses a construct this description does not understand."""


class VerifyError(Exception):
    """The FlatBuffer is malformed; `where` is the field path, e.g. Model.partitions[0].name."""

    def __init__(self, where: str, problem: str):
        self.where = where
        self.problem = problem
        super().__init__(f"{where}: {problem}")


# --------------------------------------------------------------------------------------------
# The description of the schema


@dataclass(frozen=True)
class Type:
    """What a field (or a vector's element) holds."""

    kind: str           # "scalar", "enum", "struct", "string" or "table"
    name: str           # the scalar, enum, struct or table name
    size: int = 4       # bytes stored inline (an offset for strings and tables)
    align: int = 4
    format: str = "I"   # struct format of a scalar or enum value
    values: frozenset = frozenset()  # an enum's declared values

    @property
    def is_offset(self) -> bool:
        return self.kind in ("string", "table")


@dataclass(frozen=True)
class Field:
    name: str
    slot: int           # position in the vtable: declaration order (or `id:` when given)
    type: Type
    vector: bool = False
    required: bool = False
    deprecated: bool = False

    @property
    def inline_size(self) -> int:
        return 4 if self.vector else self.type.size

    @property
    def inline_align(self) -> int:
        return 4 if self.vector else self.type.align


@dataclass
class Schema:
    tables: dict[str, list[Field]] = field(default_factory=dict)
    structs: dict[str, list[Field]] = field(default_factory=dict)
    struct_layouts: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (size, align)
    struct_offsets: dict[str, list[int]] = field(default_factory=dict)  # byte offset of each member
    enums: dict[str, Type] = field(default_factory=dict)
    root_type: str = ""
    file_identifier: str = ""

    def holds_enums(self, kind: Type) -> bool:
        """Whether a struct has enum members (at any depth), whose values need checking."""
        return any(m.type.kind == "enum" or (m.type.kind == "struct" and self.holds_enums(m.type))
                   for m in self.structs.get(kind.name, ()))


_TOKEN = re.compile(r'\s*(?:(?P<string>"[^"]*")|(?P<word>[A-Za-z_][A-Za-z0-9_.]*)|'
                    r'(?P<number>[-+]?[0-9][0-9A-Za-z_.+-]*)|(?P<punct>[{}()\[\]:;,=]))')


def _tokens(text: str) -> list[str]:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    tokens, position = [], 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if not match:
            raise SchemaError(f"cannot parse the schema near {text[position:position + 40]!r}")
        tokens.append(match.group(match.lastgroup))
        position = match.end()
    return tokens


class _Parser:
    """Recursive descent over the subset of the FlatBuffers IDL that rbln.fbs uses. Anything
    else (unions, includes, fixed arrays, ...) is refused, so it can never be misread."""

    def __init__(self, text: str):
        self.tokens = _tokens(text)
        self.at = 0
        self.declared: dict[str, str] = {}  # name -> "enum" | "struct" | "table"
        self.raw_fields: dict[str, list[tuple]] = {}
        self.schema = Schema()

    def peek(self) -> str | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            raise SchemaError(f"expected {expected or 'more'} in the schema, found {token!r}")
        self.at += 1
        return token

    def parse(self) -> Schema:
        while self.peek() is not None:
            keyword = self.take()
            if keyword in ("namespace", "file_extension", "root_type", "file_identifier"):
                value = self.take()
                self.take(";")
                if keyword == "root_type":
                    self.schema.root_type = value
                elif keyword == "file_identifier":
                    self.schema.file_identifier = value.strip('"')
            elif keyword == "enum":
                self._enum()
            elif keyword in ("table", "struct"):
                self._composite(keyword)
            else:
                raise SchemaError(f"schema construct {keyword!r} is not supported by the verifier")
        self._resolve()
        return self.schema

    def _enum(self) -> None:
        name = self.take()
        self.take(":")
        base = self.take()
        if base not in SCALARS or base in ("bool", "float", "double", "float32", "float64"):
            raise SchemaError(f"enum {name}: base type {base!r} is not an integer type")
        if "bit_flags" in self._attributes():
            raise SchemaError(f"enum {name}: bit_flags enums are not supported")
        self.take("{")
        values, next_value = set(), 0
        while self.peek() != "}":
            self.take()  # the member's name
            if self.peek() == "=":
                self.take("=")
                next_value = int(self.take(), 0)
            values.add(next_value)
            next_value += 1
            if self.peek() == ",":
                self.take(",")
        self.take("}")
        size, fmt = SCALARS[base]
        self.declared[name] = "enum"
        self.schema.enums[name] = Type("enum", name, size, size, fmt, frozenset(values))

    def _attributes(self) -> dict[str, str | None]:
        attributes: dict[str, str | None] = {}
        if self.peek() == "(":
            self.take("(")
            while self.peek() != ")":
                key = self.take()
                value = None
                if self.peek() == ":":
                    self.take(":")
                    value = self.take()
                attributes[key] = value
                if self.peek() == ",":
                    self.take(",")
            self.take(")")
        return attributes

    def _composite(self, keyword: str) -> None:
        name = self.take()
        self._attributes()
        self.take("{")
        fields = []
        while self.peek() != "}":
            field_name = self.take()
            self.take(":")
            vector = False
            if self.peek() == "[":
                self.take("[")
                type_name = self.take()
                if self.peek() == ":":
                    raise SchemaError(f"{name}.{field_name}: fixed-size arrays are not supported")
                self.take("]")
                vector = True
            else:
                type_name = self.take()
            if self.peek() == "=":
                self.take("=")
                self.take()  # the default value: absent fields are not read by the verifier
            attributes = self._attributes()
            unknown = set(attributes) - {"required", "deprecated", "id", "key"}
            if unknown:
                raise SchemaError(f"{name}.{field_name}: attribute(s) {sorted(unknown)} not supported")
            self.take(";")
            fields.append((field_name, type_name, vector, attributes))
        self.take("}")
        self.declared[name] = keyword
        self.raw_fields[name] = fields

    def _type(self, owner: str, type_name: str) -> Type:
        if type_name in SCALARS:
            size, fmt = SCALARS[type_name]
            return Type("scalar", type_name, size, size, fmt)
        if type_name == "string":
            return Type("string", "string")
        kind = self.declared.get(type_name)
        if kind == "enum":
            return self.schema.enums[type_name]
        if kind == "table":
            return Type("table", type_name)
        if kind == "struct":
            size, align = self._struct_layout(type_name)
            return Type("struct", type_name, size, align)
        raise SchemaError(f"{owner}: unknown type {type_name!r}")

    def _struct_layout(self, name: str, seen: tuple = ()) -> tuple[int, int]:
        if name in self.schema.struct_layouts:
            return self.schema.struct_layouts[name]
        if name in seen:
            raise SchemaError(f"struct {name} contains itself")
        offset, align, fields, offsets = 0, 1, [], []
        for slot, (field_name, type_name, vector, _) in enumerate(self.raw_fields[name]):
            if vector:
                raise SchemaError(f"{name}.{field_name}: a struct cannot hold a vector")
            if self.declared.get(type_name) == "struct":
                self._struct_layout(type_name, seen + (name,))
            field_type = self._type(name, type_name)
            if field_type.is_offset:
                raise SchemaError(f"{name}.{field_name}: a struct holds only scalars and structs")
            offset = (offset + field_type.align - 1) // field_type.align * field_type.align
            fields.append(Field(field_name, slot, field_type))
            offsets.append(offset)
            offset += field_type.size
            align = max(align, field_type.align)
        size = (offset + align - 1) // align * align
        self.schema.struct_layouts[name] = (size, align)
        self.schema.structs[name] = fields
        self.schema.struct_offsets[name] = offsets
        return size, align

    def _resolve(self) -> None:
        for name, kind in self.declared.items():
            if kind == "struct":
                self._struct_layout(name)
        for name, kind in self.declared.items():
            if kind != "table":
                continue
            fields = []
            for position, (field_name, type_name, vector, attributes) in enumerate(self.raw_fields[name]):
                slot = int(attributes["id"]) if attributes.get("id") is not None else position
                fields.append(Field(field_name, slot, self._type(f"{name}.{field_name}", type_name), vector,
                                    "required" in attributes, "deprecated" in attributes))
            if len({f.slot for f in fields}) != len(fields):
                raise SchemaError(f"table {name}: two fields share a vtable slot")
            self.schema.tables[name] = sorted(fields, key=lambda f: f.slot)
        if self.schema.root_type not in self.schema.tables:
            raise SchemaError(f"root_type {self.schema.root_type!r} is not a table")


def parse_schema(text: str) -> Schema:
    """The description of a FlatBuffers schema's tables, structs and enums."""
    return _Parser(text).parse()


@functools.lru_cache(maxsize=None)
def load_schema(path: str | None = None) -> Schema:
    """The description of schemas/rbln.fbs (parsed once per process)."""
    schema_path = Path(path) if path else SCHEMA_PATH
    try:
        text = schema_path.read_text()
    except OSError as exc:
        raise SchemaError(f"{schema_path}: cannot read the schema the verifier is built from ({exc})") from None
    return parse_schema(text)


# --------------------------------------------------------------------------------------------
# The walk


class _Walk:
    def __init__(self, buf, schema: Schema):
        self.buf = buf
        self.size = len(buf)
        self.schema = schema
        self.objects = 0
        self.max_objects = self.size // OBJECT_BYTES + 1

    def fail(self, where: str, problem: str):
        raise VerifyError(where, problem)

    def count(self, where: str) -> None:
        self.objects += 1
        if self.objects > self.max_objects:
            self.fail(where, f"more than {self.max_objects} objects in a {self.size}-byte FlatBuffer "
                             "(offsets are shared or overlap)")

    def check_range(self, where: str, start: int, length: int, what: str) -> None:
        if start < 0 or length < 0 or start + length > self.size:
            self.fail(where, f"{what} at {start} ({length} bytes) runs past the end of the "
                             f"{self.size}-byte FlatBuffer")

    def check_align(self, where: str, position: int, align: int, what: str) -> None:
        if position % align:
            self.fail(where, f"{what} at {position} is not aligned to {align} bytes")

    def offset_target(self, where: str, position: int) -> int:
        """Follow the uoffset stored at `position` (already bounds-checked)."""
        self.check_align(where, position, 4, "offset")
        relative = _U32.unpack_from(self.buf, position)[0]
        if relative == 0 or relative > MAX_FLATBUFFER_SIZE:
            self.fail(where, f"invalid offset {relative} at {position}")
        target = position + relative
        if target + 4 > self.size:
            self.fail(where, f"offset at {position} points to {target}, past the end of the "
                             f"{self.size}-byte FlatBuffer")
        return target

    def table(self, where: str, position: int, name: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            self.fail(where, f"tables nested deeper than {MAX_DEPTH}")
        self.count(where)
        self.check_range(where, position, 4, "table")
        self.check_align(where, position, 4, "table")
        vtable = position - _I32.unpack_from(self.buf, position)[0]
        self.check_range(where, vtable, 4, "vtable")
        self.check_align(where, vtable, 2, "vtable")
        vtable_size, table_size = _U16.unpack_from(self.buf, vtable)[0], _U16.unpack_from(self.buf, vtable + 2)[0]
        if vtable_size < 4 or vtable_size % 2:
            self.fail(where, f"vtable at {vtable} has an invalid size {vtable_size}")
        self.check_range(where, vtable, vtable_size, "vtable")
        if table_size < 4:
            self.fail(where, f"table at {position} has an invalid size {table_size}")
        self.check_range(where, position, table_size, "table")
        for fld in self.schema.tables[name]:
            entry = 4 + 2 * fld.slot
            field_offset = _U16.unpack_from(self.buf, vtable + entry)[0] if entry < vtable_size else 0
            path = f"{where}.{fld.name}"
            if field_offset == 0:
                if fld.required:
                    self.fail(path, "required field is missing")
                continue
            if fld.deprecated:
                continue  # never read
            if field_offset < 4 or field_offset + fld.inline_size > table_size:
                self.fail(path, f"field at table offset {field_offset} lies outside the {table_size}-byte table")
            at = position + field_offset
            self.check_align(path, at, fld.inline_align, "field")
            if fld.vector:
                self.vector(path, self.offset_target(path, at), fld.type, depth)
            else:
                self.value(path, at, fld.type, depth)

    def value(self, where: str, at: int, kind: Type, depth: int) -> None:
        if kind.kind == "enum":
            value = struct.unpack_from("<" + kind.format, self.buf, at)[0]
            if value not in kind.values:
                self.fail(where, f"{value} is not a value of enum {kind.name} "
                                 f"(known: {', '.join(map(str, sorted(kind.values)))})")
        elif kind.kind == "string":
            self.string(where, self.offset_target(where, at))
        elif kind.kind == "table":
            self.table(where, self.offset_target(where, at), kind.name, depth + 1)
        elif kind.kind == "struct" and self.schema.holds_enums(kind):
            for member, offset in zip(self.schema.structs[kind.name], self.schema.struct_offsets[kind.name]):
                self.value(f"{where}.{member.name}", at + offset, member.type, depth)

    def string(self, where: str, position: int) -> None:
        self.count(where)
        self.check_align(where, position, 4, "string")
        length = _U32.unpack_from(self.buf, position)[0]
        self.check_range(where, position + 4, length + 1, f"string of {length} bytes")
        if _U8.unpack_from(self.buf, position + 4 + length)[0] != 0:
            self.fail(where, f"string at {position} is not zero-terminated")
        try:
            bytes(self.buf[position + 4: position + 4 + length]).decode("utf-8")
        except UnicodeDecodeError as exc:
            self.fail(where, f"string at {position} is not UTF-8 ({exc.reason} at byte {exc.start})")

    def vector(self, where: str, position: int, element: Type, depth: int) -> None:
        self.count(where)
        self.check_align(where, position, 4, "vector")
        length = _U32.unpack_from(self.buf, position)[0]
        start = position + 4
        self.check_range(where, start, length * element.size, f"vector of {length} x {element.size} bytes")
        if element.kind == "scalar" or (element.kind == "struct" and not self.schema.holds_enums(element)):
            return  # plain bytes: the range check is all
        for i in range(length):
            self.value(f"{where}[{i}]", start + i * element.size, element, depth)


def verify_flatbuffer(buf, schema: Schema | None = None) -> None:
    """Raise VerifyError unless `buf` (the FlatBuffer alone, without the data section) is a
    well-formed instance of the schema's root table."""
    schema = schema or load_schema()
    root = schema.root_type
    size = len(buf)
    if size < 8:
        raise VerifyError(root, f"a {size}-byte FlatBuffer is too small to hold a root table")
    if size > MAX_FLATBUFFER_SIZE:
        raise VerifyError(root, f"a FlatBuffer of {size} bytes exceeds the 2 GiB limit of 32-bit offsets")
    walk = _Walk(buf, schema)
    walk.table(root, walk.offset_target(root, 0), root, 0)
