"""protobuf's reference parser (upb, in the official ``protobuf`` package) as the oracle for how
prism decodes: message classes built from descriptor sets (no generated ``_pb2`` files), a
canonical form of decoded values to compare betterproto2's with upb's, and hypothesis
strategies of wire bytes driven by a message's descriptor: valid, near-valid and mutated.
"""

from __future__ import annotations

import importlib
import importlib.resources
import math
import os
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import betterproto2
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
from hypothesis import strategies as st

TESTS = Path(__file__).parent

WRAPPERS = frozenset(
    f"google.protobuf.{name}Value"
    for name in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
)


class Oracle:
    """upb message classes for every message of a serialized ``FileDescriptorSet``."""

    def __init__(self, descriptor_set: bytes) -> None:
        files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set)
        self.pool = descriptor_pool.DescriptorPool()
        for file in files.file:
            self.pool.Add(file)

    def descriptor(self, full_name: str) -> Descriptor:
        return self.pool.FindMessageTypeByName(full_name)

    def parse(self, full_name: str, data: bytes) -> Message | None:
        """``data`` decoded by upb, or None when upb rejects it."""
        cls = message_factory.GetMessageClass(self.descriptor(full_name))
        try:
            return cls.FromString(data)
        except DecodeError:
            return None


def core_oracle() -> Oracle:
    """The oracle for prism's own protos (``prism/_proto/descriptors.binpb``)."""
    return Oracle((importlib.resources.files("prism._proto") / "descriptors.binpb").read_bytes())


@dataclass(frozen=True)
class Compiled:
    package: ModuleType  # the generated betterproto2 package's root
    oracle: Oracle


def compile_protos(out: Path, package: str, protos_root: Path, *protos: str) -> Compiled:
    """``protos`` (paths under ``protos_root``; the well-known types they import are found in
    grpc_tools) compiled with the pinned betterproto2 compiler into ``out/package``, imported;
    and the oracle for the same descriptors."""
    import grpc_tools

    plugin = Path(sys.executable).parent / "protoc-gen-python_betterproto2"
    if not plugin.exists():
        raise RuntimeError(f"{plugin} is missing: the tests session installs betterproto2-compiler")
    wkt = Path(grpc_tools.__file__).parent / "_proto"
    root = out / package
    root.mkdir(parents=True)
    descriptors = out / "descriptors.binpb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--plugin=protoc-gen-python_betterproto2={plugin}",
            f"-I{protos_root}",
            f"-I{wkt}",
            f"--python_betterproto2_out={root}",
            "--python_betterproto2_opt=client_generation=none,server_generation=none",
            f"--descriptor_set_out={descriptors}",
            "--include_imports",
            *protos,
            # betterproto2 writes the well-known types the protos import into the same package.
            "google/protobuf/wrappers.proto",
            "google/protobuf/any.proto",
        ],
        check=True,
        capture_output=True,
        # The compiler formats its output with the ruff beside it.
        env={**os.environ, "PATH": f"{plugin.parent}{os.pathsep}{os.environ.get('PATH', '')}"},
    )
    sys.path.insert(0, str(out))
    try:
        return Compiled(importlib.import_module(package), Oracle(descriptors.read_bytes()))
    finally:
        sys.path.remove(str(out))


# -- canonical values: what upb and betterproto2 decoded, in one comparable form --------------


def _scalar(value: object) -> object:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else struct.pack("<d", value)
    if isinstance(value, betterproto2.Enum):
        return int(value)
    return value


def canon_upb(message: Message) -> dict[int, object]:
    """Field number → value, for the fields upb holds as present."""
    return {field.number: _upb_field(field, value) for field, value in message.ListFields()}


def _upb_field(field: FieldDescriptor, value: Any) -> object:
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        value_field = entry.fields_by_name["value"]
        return {k: _upb_single(value_field, v) for k, v in value.items()}
    if field.is_repeated:
        return [_upb_single(field, v) for v in value]
    return _upb_single(field, value)


def _upb_single(field: FieldDescriptor, value: Any) -> object:
    if field.message_type is None:
        return _scalar(value)
    if field.message_type.full_name in WRAPPERS:
        return _scalar(value.value)  # betterproto2 unwraps these into the plain value
    return canon_upb(value)


def canon_betterproto(message: betterproto2.Message) -> dict[int, object]:
    """The same form as :func:`canon_upb`, from a betterproto2 message."""
    info: Any = type(message)._betterproto  # type: ignore[attr-defined]
    out: dict[int, object] = {}
    for name, meta in info.meta_by_field_name.items():
        value = getattr(message, name)
        if meta.proto_type == betterproto2.TYPE_MAP:
            if value:
                out[meta.number] = {k: _bp_single(meta.map_meta[1], v) for k, v in value.items()}
        elif meta.repeated:
            if value:
                out[meta.number] = [_bp_single(meta, v) for v in value]
        elif meta.group or meta.optional or meta.proto_type == betterproto2.TYPE_MESSAGE:
            if value is not None:
                out[meta.number] = _bp_single(meta, value)
        elif not _is_default(value):
            out[meta.number] = _bp_single(meta, value)
    return out


def _bp_single(meta: Any, value: Any) -> object:
    if meta.proto_type == betterproto2.TYPE_MESSAGE and not meta.unwrap:
        return canon_betterproto(value)
    return _scalar(value)


def _is_default(value: object) -> bool:
    if isinstance(value, float):
        return struct.pack("<d", value) == bytes(8)  # -0.0 is present for upb
    return not value


# -- wire bytes ---------------------------------------------------------------------------------

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5

_NATURAL_WIRE = {
    FieldDescriptor.TYPE_DOUBLE: I64,
    FieldDescriptor.TYPE_FIXED64: I64,
    FieldDescriptor.TYPE_SFIXED64: I64,
    FieldDescriptor.TYPE_FLOAT: I32,
    FieldDescriptor.TYPE_FIXED32: I32,
    FieldDescriptor.TYPE_SFIXED32: I32,
    FieldDescriptor.TYPE_STRING: LEN,
    FieldDescriptor.TYPE_BYTES: LEN,
    FieldDescriptor.TYPE_MESSAGE: LEN,
}


def varint(value: int) -> bytes:
    value &= (1 << 70) - 1
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@st.composite
def _varint(draw: st.DrawFn, value: int | None = None) -> bytes:
    """A varint, sometimes padded with redundant bytes (up to 11 in all: one too many)."""
    if value is None:
        value = draw(
            st.one_of(
                st.integers(0, 300),
                st.integers(0, 2**64 - 1),
                st.integers(-(2**63), -1),
                st.integers(2**31 - 5, 2**33),
                st.integers(2**64 - 2**33, 2**70 - 1),
            )
        )
    encoded = bytearray(varint(value))
    if draw(st.integers(0, 9)) == 0:
        pad = draw(st.integers(1, 11 - len(encoded))) if len(encoded) < 11 else 0
        if pad:
            encoded[-1] |= 0x80
            encoded += b"\x80" * (pad - 1) + b"\x00"
    return bytes(encoded)


@st.composite
def _tag(draw: st.DrawFn, number: int, wire: int) -> bytes:
    if draw(st.integers(0, 19)) == 0:
        return draw(_varint(number << 3 | wire))  # padded tags: upb takes up to 5 bytes
    return varint(number << 3 | wire)


_bad_utf8 = st.sampled_from(
    [b"\xff", b"a\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82"]
)
_good_utf8 = st.text(st.characters(exclude_categories=["Cs"]), max_size=12).map(str.encode)
_texts = st.integers(0, 15).flatmap(lambda i: _bad_utf8 if i == 0 else _good_utf8)


@st.composite
def wire_message(draw: st.DrawFn, descriptor: Descriptor, depth: int = 0) -> bytes:
    """Bytes shaped like ``descriptor``'s message: its fields, mostly with their own wire types
    and plausible values (nested messages, map entries, packed runs, text and bad UTF-8),
    unknown fields, groups, and now and then a field with another wire type."""
    out = bytearray()
    for _ in range(draw(st.integers(0, 5 if depth < 1 else 3))):
        fields = list(descriptor.fields)
        if fields and draw(st.integers(0, 4)) > 0:
            out += draw(_known_field(draw(st.sampled_from(fields)), depth))
        else:
            out += draw(_unknown_field(descriptor, depth))
    return bytes(out)


@st.composite
def _known_field(draw: st.DrawFn, field: FieldDescriptor, depth: int) -> bytes:
    natural = _NATURAL_WIRE.get(field.type, VARINT)
    repeated = field.is_repeated
    if draw(st.integers(0, 9)) == 0:
        wire = draw(st.sampled_from([VARINT, I64, LEN, I32, SGROUP]))
    elif repeated and natural != LEN and draw(st.booleans()):
        wire = LEN  # packed
    else:
        wire = natural
    tag = draw(_tag(field.number, wire))
    if wire == SGROUP:
        return (
            tag
            + draw(wire_message(field.containing_type, depth + 1))
            + varint(field.number << 3 | EGROUP)
        )
    if wire != LEN:
        return tag + draw(_scalar_value(wire))
    if natural != LEN:  # packed scalars
        run = b"".join(draw(st.lists(_scalar_value(natural), max_size=4)))
        if draw(st.integers(0, 9)) == 0:
            run = run[: draw(st.integers(0, len(run)))]
        return tag + varint(len(run)) + run
    if field.type == FieldDescriptor.TYPE_STRING:
        payload = draw(_texts)
    elif field.type == FieldDescriptor.TYPE_MESSAGE and depth < 3:
        payload = draw(wire_message(field.message_type, depth + 1))
    else:
        payload = draw(st.binary(max_size=12))
    return tag + varint(len(payload)) + payload


@st.composite
def _scalar_value(draw: st.DrawFn, wire: int) -> bytes:
    if wire == VARINT:
        return draw(_varint())
    if wire == I32:
        return draw(st.binary(min_size=4, max_size=4))
    return draw(st.binary(min_size=8, max_size=8))


@st.composite
def _unknown_field(draw: st.DrawFn, descriptor: Descriptor, depth: int) -> bytes:
    number = draw(st.sampled_from([1, 2, 5, 15, 16, 99, 2047, 2**29 - 1]))
    wire = draw(st.sampled_from([VARINT, I64, LEN, SGROUP, I32]))
    if draw(st.integers(0, 19)) == 0:  # now and then what upb never takes
        number, wire = draw(st.sampled_from([(0, VARINT), (0, LEN), (1, EGROUP), (1, 6), (2, 7)]))
    tag = draw(_tag(number, wire))
    if wire == SGROUP:
        inner = draw(wire_message(descriptor, depth + 1)) if depth < 3 else b""
        end = number if draw(st.integers(0, 9)) else draw(st.integers(1, 20))
        return tag + inner + varint(end << 3 | EGROUP)
    if wire == LEN:
        payload = draw(st.one_of(st.binary(max_size=10), _texts))
        return tag + varint(len(payload)) + payload
    if wire in (VARINT, I32, I64):
        return tag + draw(_scalar_value(wire))
    return tag


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data``, or ``data`` cut short, with a byte dropped, inserted or changed."""
    how = draw(st.integers(0, 5))
    if how < 2 or not data:
        return data
    at = draw(st.integers(0, len(data) - 1))
    if how == 2:
        return data[:at]
    if how == 3:
        return data[:at] + data[at + 1 :]
    byte = bytes([draw(st.integers(0, 255))])
    if how == 4:
        return data[:at] + byte + data[at:]
    return data[:at] + byte + data[at + 1 :]


def wire_bytes(descriptor: Descriptor) -> st.SearchStrategy[bytes]:
    """Everything the property tests feed a decoder: shaped, mutated, concatenated, random."""
    shaped = wire_message(descriptor)
    return st.one_of(
        shaped.flatmap(mutated),
        st.tuples(shaped, shaped).map(b"".join),
        st.binary(max_size=40),
    )
