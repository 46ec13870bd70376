"""``google.protobuf``: the well-known types Prism uses (``Any``, ``Struct``, ``Value``).

See :mod:`prism.protos`.
"""

from __future__ import annotations

from prism._proto.google.protobuf import *  # noqa: F403
from prism._proto.google.protobuf import __all__ as __all__
