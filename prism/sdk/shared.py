"""Stream results shared by many streams: encoded once, whatever the number of streams.

A pub/sub plugin delivers each published message to every subscriber. Sent as a plain message,
it is encoded once per subscriber (packed into an ``Any``, wrapped in a ``StreamResponse``,
serialized): with 500 subscribers, 500 times the same work. Wrapped once in a
:class:`SharedResult` and handed to every subscriber's ``stream.send``, it is encoded on first
use, and every stream sends the same bytes on (the sidecar's server, the proxy's front door and
its in-process path forward them without decoding).
"""

from __future__ import annotations

import betterproto2

from prism.sdk import _envelope
from prism.sdk.plugin import Payload

__all__ = ["SharedResult"]


class SharedResult:
    """One result for ``OperationStream.send`` on any number of streams.

    ``value`` is the result itself (of the operation's declared result type, checked at each
    send); the encoded ``StreamResponse`` is made the first time a stream needs it. The value
    must not change once wrapped: every stream sends what was encoded first. On the in-process
    typed path (``call_stream``) streams receive ``value`` itself.
    """

    __slots__ = ("_encoded", "value")

    def __init__(self, value: Payload) -> None:
        if not isinstance(value, bytes | betterproto2.Message):
            raise TypeError(f"a stream result is bytes or a message, not {type(value).__name__}")
        self.value = value
        self._encoded: bytes | None = None

    def stream_response(self) -> bytes:
        """The encoded ``StreamResponse`` carrying ``value`` (made once, then reused)."""
        encoded = self._encoded
        if encoded is None:
            encoded = self._encoded = _envelope.stream_result(self.value)
        return encoded

    def __repr__(self) -> str:
        return f"SharedResult({self.value!r})"
