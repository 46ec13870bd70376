"""An example Prism sidecar plugin on asyncio, with grpclib as its gRPC server.

It imports neither Prism nor Trio: it speaks the plugin protocol (``prism.plugin.v1``, from
messages generated into its own ``_proto``) and the launch handshake by itself, to show that a
plugin may use any runtime. See README.md.
"""

from __future__ import annotations

from prism_plugin_asyncio_kv.server import main, serve
from prism_plugin_asyncio_kv.service import VERSION, KvService

__all__ = ["VERSION", "KvService", "main", "serve"]
