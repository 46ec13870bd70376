"""Counting the copies a process makes of payload bytes, with memray (an allocation tracker).

Copies of large payloads are what zero-copy forwarding avoids (docs/architecture.md, "Zero-copy
path"). A copy needs a buffer to go to: a new ``bytes``, a ``bytearray`` that grows, the bytes
``os.read`` fills. :class:`CopyCounter` records every allocation while it runs (memray hooks
``malloc``/``realloc`` and friends, freed blocks included) and adds up the bytes of the blocks of
at least ``threshold`` bytes: a ``malloc`` counts its size, a ``realloc`` what it added (a
buffer grown by appends counts what was appended; one shrunk counts negative, as ``os.read``
shrinks the buffer it allocated to what it read). Divided by the payload bytes that went
through, that is the number of copies per payload byte, whatever the sizes of the pieces.

Not seen: copies into a buffer that was already large enough (a ``bytearray`` with room to
spare, ``readinto``), and the kernel's own copies (``write``, ``read``). The first is rare on
these paths (buffers here are made per message or per write); the second is one per hop per
direction, counted as the ``os.read`` allocation it fills.

Each counted block is attributed to the innermost Python frame in ``prism/`` (else the
innermost frame) of the allocation's stack: :attr:`Copies.sites` says where the copies are.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

_ALLOCATORS = (
    "MALLOC",
    "CALLOC",
    "REALLOC",
    "POSIX_MEMALIGN",
    "ALIGNED_ALLOC",
    "MEMALIGN",
    "VALLOC",
    "PVALLOC",
)


@dataclass
class Copies:
    """Bytes allocated in large blocks while counting, in all and per place in the code."""

    total: int = 0
    sites: dict[str, int] = field(default_factory=dict)
    #: What was allocated (and still held) at the moment the process held the most, by place.
    peak: dict[str, int] = field(default_factory=dict)

    def per(self, payload: int) -> float:
        """Copies per payload byte, for ``payload`` bytes forwarded."""
        return self.total / payload

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "sites": self.sites, "peak": self.peak}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Copies:
        return cls(
            int(data.get("total", 0)), dict(data.get("sites", {})), dict(data.get("peak", {}))
        )

    def describe(self, payload: int) -> str:
        lines = [f"{self.per(payload):.2f} copies per payload byte ({self.total} bytes)"]
        for site, size in sorted(self.sites.items(), key=lambda item: -abs(item[1])):
            if abs(size) * 50 >= payload:
                lines.append(f"  {size / payload:6.2f}  {site}")
        return "\n".join(lines)


class CopyCounter:
    """``start()`` … ``stop()`` → :class:`Copies` of the blocks of at least ``threshold`` bytes.

    One at a time per process (memray's rule). The memray capture file is removed by ``stop``.
    """

    def __init__(self, threshold: int = 2048) -> None:
        self.threshold = threshold
        self._tracker: Any = None
        self._path = ""

    def start(self) -> None:
        import memray

        fd, self._path = tempfile.mkstemp(suffix=".memray")
        os.close(fd)
        os.unlink(self._path)  # memray refuses to overwrite
        self._tracker = memray.Tracker(self._path, native_traces=True)
        self._tracker.__enter__()

    def stop(self) -> Copies:
        import memray

        tracker, self._tracker = self._tracker, None
        tracker.__exit__(None, None, None)
        try:
            reader = memray.FileReader(self._path)
            copies = _count(reader, self.threshold)
            for record in reader.get_high_watermark_allocation_records(merge_threads=True):
                if record.size >= self.threshold:
                    site = _site(record)
                    copies.peak[site] = copies.peak.get(site, 0) + record.size
            return copies
        finally:
            os.unlink(self._path)

    def __enter__(self) -> CopyCounter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.result = self.stop()


def _count(reader: Any, threshold: int) -> Copies:
    import memray

    names = {int(kind): kind.name for kind in memray.AllocatorType}
    counted = {number for number, name in names.items() if name in _ALLOCATORS}
    free = {number for number, name in names.items() if name == "FREE"}
    realloc = {number for number, name in names.items() if name == "REALLOC"}
    live: dict[int, int] = {}
    freed = 0  # size of the block freed just before (memray reports realloc as free + alloc)
    copies = Copies()
    for record in reader.get_allocation_records():
        kind = int(record.allocator)
        if kind in free:
            freed = live.pop(record.address, 0)
            continue
        if kind not in counted:
            continue
        size = record.size
        live[record.address] = size
        added = size - freed if kind in realloc else size
        if (kind in realloc and max(size, freed) < threshold) or (
            kind not in realloc and size < threshold
        ):
            freed = 0
            continue
        freed = 0
        site = _site(record)
        copies.total += added
        copies.sites[site] = copies.sites.get(site, 0) + added
    return copies


def _site(record: Any) -> str:
    # The hybrid stack (native frames and Python's): a block a C function allocates, such as
    # os.read's, has its Python caller there even where memray's Python stack is empty.
    try:
        stack = record.hybrid_stack_trace()
    except Exception:
        stack = record.stack_trace()
    python = [(f, name, line) for f, name, line in stack if name.endswith(".py")]
    for function, filename, line in python:
        if "/prism/" in filename:
            return f"{_short(filename)}:{line} {function}"
    if python:
        function, filename, line = python[0]
        return f"{_short(filename)}:{line} {function}"
    return "(no Python frame)"


def _short(filename: str) -> str:
    for marker in ("/prism/", "/bench/", "/tests/", "/site-packages/"):
        _, sep, tail = filename.rpartition(marker)
        if sep:
            return marker.strip("/") + "/" + tail
    return filename
