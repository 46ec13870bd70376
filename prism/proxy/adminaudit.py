"""The audit record of an admin action, one function the audit stage can take over.

Until ``prism/proxy/audit.py`` has its ``record_admin``, every admin action (a change, or a call
refused for want of credentials) is one JSON line on the ``prism.audit`` logger: ``action``,
``target`` (a namespace, or ""), ``caller`` (``token``, ``cert:NAME``, ``unix-socket``,
``anonymous``, ``signal:SIGHUP``), ``peer`` and ``status`` (the gRPC status name). Never
a token.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prism.proxy.adminauth import AdminCaller

__all__ = ["record_admin"]

log = logging.getLogger("prism.audit")


def record_admin(action: str, target: str, caller: AdminCaller, status: str) -> None:
    record = {
        "time": time.time(),
        "kind": "admin",
        "action": action,
        "target": target,
        "caller": caller.name,
        "peer": caller.address,
        "status": status,
    }
    log.info(json.dumps(record, separators=(",", ":")))
