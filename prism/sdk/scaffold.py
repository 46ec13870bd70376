"""``prism plugin init <name>``: a new plugin distribution that installs and passes its tests.

The skeleton has no config message (that needs the protobuf generator, see the plugin guide), so
``pip install -e <dir> && pytest <dir>`` works straight away.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["scaffold"]

_NAME = re.compile(r"[a-z][a-z0-9_]{0,40}")


def scaffold(name: str, directory: Path | None = None) -> Path:
    """Write the distribution for plugin ``name`` into ``directory`` (default ``./<name>``) and
    return that directory. Raises ``ValueError`` for a bad name or a non-empty directory."""
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"plugin name {name!r}: use lowercase letters, digits and '_', starting with a letter"
        )
    root = directory if directory is not None else Path.cwd() / name
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"{root} exists and is not empty")
    package = f"prism_plugin_{name}"
    cls = "".join(part.capitalize() for part in name.split("_")) + "Plugin"
    files = {
        "pyproject.toml": _PYPROJECT,
        "README.md": _README,
        f"src/{package}/__init__.py": _INIT,
        f"src/{package}/plugin.py": _PLUGIN,
        f"src/{package}/py.typed": "",
        f"tests/test_{name}.py": _TEST,
    }
    for relative, template in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        text = template.replace("{name}", name).replace("{package}", package)
        path.write_text(text.replace("{cls}", cls))
    return root


_PYPROJECT = """\
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "prism-plugin-{name}"
version = "0.1.0"
description = "Prism backend plugin: {name}"
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["prism-proxy>=0.1,<0.2", "trio>=0.27", "betterproto2==0.10.0"]

[project.optional-dependencies]
test = ["pytest>=8", "pytest-trio>=0.8"]

[project.entry-points."prism.plugins"]
{name} = "{package}:{cls}"

[tool.setuptools.packages.find]
where = ["src"]

[tool.setuptools.package-data]
{package} = ["py.typed", "_proto/*.binpb"]

[tool.pytest.ini_options]
trio_mode = true
"""

_README = """\
# prism-plugin-{name}

A Prism backend plugin. See Prism's plugin development guide (docs/plugin-guide.md).

```sh
pip install -e '.[test]' && pytest
```

The plugin is found by the proxy through the entry point `prism.plugins` → `{name}`.
"""

_INIT = '''\
"""Prism backend plugin: {name}."""

from __future__ import annotations

from {package}.plugin import {cls}

__all__ = ["{cls}"]
'''

_PLUGIN = '''\
"""The {name} plugin. Replace the dictionary with your backend's client."""

from __future__ import annotations

from collections.abc import Mapping

from prism._proto.prism.data.v1 import (
    DeleteRequest,
    DeleteResponse,
    GetRequest,
    GetResponse,
    SetRequest,
    SetResponse,
)
from prism.sdk import BackendPlugin, InvalidArgument, OperationContext, operation


class {cls}(BackendPlugin):
    name = "{name}"
    version = "0.1.0"
    config_type = None  # set to your generated config message (see the plugin guide)

    async def initialize(
        self, config: None, credentials: Mapping[str, str], namespace: str
    ) -> None:
        # Connect here; start background tasks with self.nursery.start_soon(...).
        self._data: dict[str, bytes] = {}

    async def shutdown(self, grace_seconds: float) -> None:
        self._data.clear()  # close connections here

    @operation("get", params=GetRequest, result=GetResponse)
    async def get(self, params: GetRequest, ctx: OperationContext) -> GetResponse:
        if not params.key:
            raise InvalidArgument("key must not be empty")
        if params.key not in self._data:
            ctx.cache_miss()
            return GetResponse(found=False)
        ctx.cache_hit()
        return GetResponse(found=True, value=self._data[params.key])

    @operation("set", params=SetRequest, result=SetResponse)
    async def set(self, params: SetRequest, ctx: OperationContext) -> SetResponse:
        if not params.key:
            raise InvalidArgument("key must not be empty")
        self._data[params.key] = params.value
        return SetResponse()

    @operation("delete", params=DeleteRequest, result=DeleteResponse)
    async def delete(self, params: DeleteRequest, ctx: OperationContext) -> DeleteResponse:
        return DeleteResponse(deleted=self._data.pop(params.key, None) is not None)
'''

_TEST = """\
from __future__ import annotations

import pytest

from prism._proto.prism.data.v1 import GetRequest, GetResponse, SetRequest
from prism.sdk import InvalidArgument
from prism.sdk.testing import PluginHarness
from {package} import {cls}


@pytest.mark.parametrize("typed", [False, True])
async def test_{name}_set_then_get(typed: bool) -> None:
    async with PluginHarness({cls}, typed=typed) as h:
        await h.execute("set", SetRequest(key="a", value=b"1"))
        assert await h.execute("get", GetRequest(key="a")) == GetResponse(found=True, value=b"1")


async def test_{name}_empty_key_is_invalid_argument() -> None:
    async with PluginHarness({cls}) as h:
        with pytest.raises(InvalidArgument, match="key must not be empty"):
            await h.execute("get", GetRequest(key=""))
"""
