"""Faster HPACK coding for h2: hpack's tables and limits, less work per header.

Decoding: hpack's :class:`hpack.Decoder` spent ~13% of a unary RPC decoding request headers:
it slices a memoryview and copies the rest of the block for every field, builds
``HeaderTuple`` objects twice, logs each field, and Huffman-decodes the same strings over and
over (nghttp2, and so h2load, never indexes ``:path``, so every request carries it as a
Huffman literal).

:class:`Decoder` subclasses hpack's and replaces only :meth:`decode` (what h2 calls, with
``raw=True``): it walks the block with integer offsets, returns plain ``(name, value)`` byte
tuples, and caches Huffman decodings of strings up to 4 KiB (within a byte budget). The
dynamic table is hpack's own :class:`hpack.table.HeaderTable`, so sizes, evictions and
table-size updates behave exactly as before; errors are hpack's exceptions, which h2 turns
into a connection error.

Encoding: hpack's :class:`hpack.Encoder` searches the dynamic table linearly, logs every field
and rebuilds each representation through generic helpers (~5% of a unary RPC for the response
headers and trailers). :class:`Encoder` finds entries through two dicts kept beside hpack's
table and emits byte-for-byte what hpack's encoder would (the tests compare them).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

import hpack
from hpack.hpack import INDEX_INCREMENTAL, INDEX_NEVER
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable, table_entry_size

_STATIC = HeaderTable.STATIC_TABLE
_STATIC_LEN = HeaderTable.STATIC_TABLE_LENGTH
_STATIC_MAPPING = HeaderTable.STATIC_TABLE_MAPPING
# The indexed representation (RFC 7541 §6.1) of every index that fits in the first octet.
_INDEXED = [bytes([0x80 | i]) for i in range(0x7F)]
# An HPACK integer may take the prefix plus this many continuation octets (as hpack allows).
_MAX_CONTINUATION = 4

# Huffman decodings, shared by all connections: header names and values repeat across
# requests (paths, content types, user agents) and so do bearer tokens: h2load and many
# clients send ``authorization`` as a never-indexed Huffman literal, and hpack's pure-Python
# ``decode_huffman`` takes ~40 µs for a JWT, on every call. A decoding depends only on the
# coded bytes, so sharing it across connections leaks nothing between them (a hit tells a
# caller only that the string it sent was seen before). The cache does keep header values,
# tokens among them, in memory until it is cleared (as the authenticator's token cache does,
# for their lifetime). Bounded by entry count and by the bytes of its keys and values
# together; cleared when either would be exceeded, so unique strings sent by a client cost at
# most the budget and the decoding they would have cost anyway.
_HUFFMAN_CACHE: dict[bytes, bytes] = {}
_HUFFMAN_CACHE_ENTRIES = 1024
_HUFFMAN_CACHE_MAX_LEN = 4096  # coded bytes: a real issuer's JWT is 0.8-2 KiB
_HUFFMAN_CACHE_BUDGET = 1 << 20  # bytes of keys + values
_huffman_cache_bytes = 0


def _huffman(raw: bytes) -> bytes:
    global _huffman_cache_bytes
    decoded = _HUFFMAN_CACHE.get(raw)
    if decoded is None:
        decoded = decode_huffman(raw)
        if len(raw) <= _HUFFMAN_CACHE_MAX_LEN:
            size = len(raw) + len(decoded)
            if (
                len(_HUFFMAN_CACHE) >= _HUFFMAN_CACHE_ENTRIES
                or _huffman_cache_bytes + size > _HUFFMAN_CACHE_BUDGET
            ):
                _HUFFMAN_CACHE.clear()
                _huffman_cache_bytes = 0
            _HUFFMAN_CACHE[raw] = decoded
            _huffman_cache_bytes += size
    return decoded


def _integer(data: bytes, pos: int, value: int) -> tuple[int, int]:
    """The continuation of an HPACK integer whose prefix was all ones (``value``)."""
    shift = 0
    for _ in range(_MAX_CONTINUATION):
        if pos >= len(data):
            raise hpack.HPACKDecodingError("Truncated header block")
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise hpack.HPACKDecodingError("HPACK integer representation is too long")


class Decoder(hpack.Decoder):
    def decode(self, data: bytes, raw: bool = False) -> Iterable[hpack.HeaderTuple]:
        if not raw:
            return super().decode(data, raw)
        if not isinstance(data, bytes):
            data = bytes(data)
        table = self.header_table
        dynamic = table.dynamic_entries
        headers: list[tuple[bytes, bytes]] = []
        limit = self.max_header_list_size
        inflated = 0
        end = len(data)
        pos = 0
        while pos < end:
            first = data[pos]
            pos += 1
            if first & 0x80:  # indexed field (RFC 7541 §6.1)
                index = first & 0x7F
                if index == 0x7F:
                    index, pos = _integer(data, pos, index)
                header = self._entry(index, dynamic)
            elif first & 0x40 or not first & 0x20:  # literal (§6.2)
                if first & 0x40:  # with incremental indexing
                    index = first & 0x3F
                    if index == 0x3F:
                        index, pos = _integer(data, pos, index)
                else:  # without indexing / never indexed
                    index = first & 0x0F
                    if index == 0x0F:
                        index, pos = _integer(data, pos, index)
                if index:
                    name = self._entry(index, dynamic)[0]
                else:
                    name, pos = self._string(data, pos, end)
                value, pos = self._string(data, pos, end)
                header = (name, value)
                if first & 0x40:
                    table.add(name, value)
            else:  # dynamic table size update (§6.3): only before the first field
                if headers:
                    raise hpack.HPACKDecodingError(
                        "Table size update not at the start of the block"
                    )
                size = first & 0x1F
                if size == 0x1F:
                    size, pos = _integer(data, pos, size)
                if size > self.max_allowed_table_size:
                    raise hpack.InvalidTableSizeError("Encoder exceeded max allowable table size")
                table.maxsize = size
                continue
            headers.append(header)
            inflated += 32 + len(header[0]) + len(header[1])
            if inflated > limit:
                raise hpack.OversizedHeaderListError(
                    f"A header list larger than {limit} has been received"
                )
        if table.maxsize > self.max_allowed_table_size:
            raise hpack.InvalidTableSizeError("Encoder did not shrink table size to within the max")
        return headers  # type: ignore[return-value]

    @staticmethod
    def _entry(index: int, dynamic: deque[tuple[bytes, bytes]]) -> tuple[bytes, bytes]:
        if 0 < index <= _STATIC_LEN:
            return _STATIC[index - 1]
        offset = index - _STATIC_LEN - 1
        if 0 <= offset < len(dynamic):
            return dynamic[offset]
        raise hpack.InvalidTableIndex(f"Invalid table index {index}")

    @staticmethod
    def _string(data: bytes, pos: int, end: int) -> tuple[bytes, int]:
        if pos >= end:
            raise hpack.HPACKDecodingError("Truncated header block")
        first = data[pos]
        length = first & 0x7F
        pos += 1
        if length == 0x7F:
            length, pos = _integer(data, pos, length)
        stop = pos + length
        if stop > end:
            raise hpack.HPACKDecodingError("Truncated header block")
        value = data[pos:stop]
        return (_huffman(value) if first & 0x80 else value), stop


class Encoder(hpack.Encoder):
    def __init__(self) -> None:
        super().__init__()
        # Every entry ever added to the dynamic table gets the next insertion number; the
        # newest entry sits at position 0 of hpack's deque, so an entry numbered k is at
        # ``self._inserted - 1 - k`` and still in the table iff that is < len(the deque)
        # (evictions remove the oldest entries; a clear leaves only newer numbers valid).
        self._inserted = 0
        self._exact: dict[tuple[bytes, bytes], int] = {}  # newest number of a (name, value)
        self._names: dict[bytes, int] = {}  # newest number of a name

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        if not isinstance(headers, list):
            return super().encode(headers, huffman)
        table = self.header_table
        parts: list[bytes] = []
        if table.resized:
            parts.append(self._encode_table_size_change())
            table.resized = False
        for header in headers:
            if type(header) is tuple and len(header) == 2:
                name, value = header
                if type(name) is not bytes or type(value) is not bytes:
                    name, value = _to_bytes(name), _to_bytes(value)
                parts.append(self.add((name, value), False, huffman))
            else:  # hpack.HeaderTuple / NeverIndexedHeaderTuple, or (name, value, sensitive)
                if isinstance(header, hpack.HeaderTuple):
                    sensitive = not header.indexable
                else:
                    sensitive = len(header) > 2 and bool(header[2])
                pair = (_to_bytes(header[0]), _to_bytes(header[1]))
                parts.append(self.add(pair, sensitive, huffman))
        return b"".join(parts)

    def add(self, to_add: tuple[bytes, bytes], sensitive: bool, huffman: bool = False) -> bytes:
        # The same choices as hpack's Encoder.add (via HeaderTable.search): a static exact
        # match, else the newest dynamic exact match, else a static name, else the newest
        # dynamic name; then a literal, added to the table unless sensitive.
        name, value = to_add
        static = _STATIC_MAPPING.get(name)
        if static is not None:
            index = static[1].get(value)
            if index is not None:
                return _INDEXED[index]
        live = len(self.header_table.dynamic_entries)
        number = self._exact.get(to_add)
        if number is not None:
            position = self._inserted - 1 - number
            if position < live:
                index = _STATIC_LEN + 1 + position
                return _INDEXED[index] if index < 0x7F else self._encode_indexed(index)
        name_index: int | None = None
        if static is not None:
            name_index = static[0]
        else:
            number = self._names.get(name)
            if number is not None:
                position = self._inserted - 1 - number
                if position < live:
                    name_index = _STATIC_LEN + 1 + position
        indexbit = INDEX_NEVER if sensitive else INDEX_INCREMENTAL
        if name_index is None:
            encoded = self._encode_literal(name, value, indexbit, huffman)
        else:
            encoded = self._encode_indexed_literal(name_index, value, indexbit, huffman)
        if not sensitive:
            self._add_entry(name, value)
        return encoded

    def _add_entry(self, name: bytes, value: bytes) -> None:
        table = self.header_table
        table.add(name, value)
        if table_entry_size(name, value) > table.maxsize:
            # hpack emptied the table instead of adding: every number so far is stale.
            self._exact.clear()
            self._names.clear()
            return
        self._exact[(name, value)] = self._names[name] = self._inserted
        self._inserted += 1
        if len(self._exact) > 2 * len(table.dynamic_entries) + 64:
            self._reindex()

    def _reindex(self) -> None:
        """Forget evicted entries (unique values would otherwise grow the dicts forever)."""
        self._exact.clear()
        self._names.clear()
        entries = self.header_table.dynamic_entries
        for position in range(len(entries) - 1, -1, -1):  # oldest first: newest numbers win
            entry = entries[position]
            self._exact[entry] = self._names[entry[0]] = self._inserted - 1 - position


def _to_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return (value if isinstance(value, str) else str(value)).encode("utf-8")
