"""``prism.proxy.v1``: the client API's messages (``DataProxy.Execute``, ``ExecuteStream``).

See :mod:`prism.protos`.
"""

from __future__ import annotations

from prism._proto.prism.proxy.v1 import *  # noqa: F403
from prism._proto.prism.proxy.v1 import __all__ as __all__
