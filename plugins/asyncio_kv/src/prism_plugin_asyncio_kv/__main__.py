"""``python -m prism_plugin_asyncio_kv``: the command the proxy runs (see server.py)."""

from __future__ import annotations

from prism_plugin_asyncio_kv.server import main

if __name__ == "__main__":
    main()
