"""``prism.plugin.v1``: the plugin protocol's messages (RFC-008's ``BackendPlugin``).

See :mod:`prism.protos`.
"""

from __future__ import annotations

from prism._proto.prism.plugin.v1 import *  # noqa: F403
from prism._proto.prism.plugin.v1 import __all__ as __all__
