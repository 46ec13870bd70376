"""``prism.config.v1``: the config document the proxy sends a plugin.

See :mod:`prism.protos`.
"""

from __future__ import annotations

from prism._proto.prism.config.v1 import *  # noqa: F403
from prism._proto.prism.config.v1 import __all__ as __all__
