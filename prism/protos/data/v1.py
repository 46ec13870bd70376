"""``prism.data.v1``: the data model (key-value and pub/sub operations' messages).

See :mod:`prism.protos`.
"""

from __future__ import annotations

from prism._proto.prism.data.v1 import *  # noqa: F403
from prism._proto.prism.data.v1 import __all__ as __all__
