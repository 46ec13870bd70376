"""``prism.admin.v1``: the admin API's messages.

See :mod:`prism.protos`.
"""

from __future__ import annotations

from prism._proto.prism.admin.v1 import *  # noqa: F403
from prism._proto.prism.admin.v1 import __all__ as __all__
