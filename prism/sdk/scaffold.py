"""``prism plugin init <name>``: a new plugin distribution that installs and passes its tests.

It writes the package, its config proto (``protos/prism/plugins/<name>/v1/config.proto``) with
the code betterproto2 generates for it already in ``src/<package>/_proto``, operations, tests and
a README, so ``pip install -e <dir> && pytest <dir>`` works straight away, without the protobuf
generator installed.

The generated code is a template rendered for the name, not a compiler run: the pinned
``betterproto2-compiler`` would otherwise be a dependency of every proxy installation. A test
(``tests/sdk/test_sdk_scaffold.py``) runs the pinned compiler on the scaffold's own proto, from
the scaffold's directory as its README says, and requires the very same files, so the template
cannot drift from the generator.
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path

from betterproto2.casing import pascal_case

__all__ = ["scaffold"]

_NAME = re.compile(r"[a-z][a-z0-9_]{0,40}")
#: The scaffold's ``[tool.ruff] line-length``. betterproto2-compiler formats what it writes with
#: ruff, which reads it from the pyproject.toml of the directory the generator runs in.
_LINE_LENGTH = 100


def scaffold(name: str, directory: Path | None = None) -> Path:
    """Write the distribution for plugin ``name`` into ``directory`` (default ``./<name>``) and
    return that directory. Raises ``ValueError`` for a bad name or a non-empty directory."""
    if not _NAME.fullmatch(name) or keyword.iskeyword(name):
        raise ValueError(
            f"plugin name {name!r}: use lowercase letters, digits and '_', starting with a letter "
            "(and not a Python keyword)"
        )
    root = directory if directory is not None else Path.cwd() / name
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"{root} exists and is not empty")
    package = f"prism_plugin_{name}"
    config = config_class_name(name)
    cls = config.removesuffix("Config") + "Plugin"  # MyCachePlugin beside MyCacheConfig
    proto = f"src/{package}/_proto"
    files = {
        "pyproject.toml": _PYPROJECT,
        "README.md": _README,
        f"protos/prism/plugins/{name}/v1/config.proto": _CONFIG_PROTO,
        f"src/{package}/__init__.py": _INIT,
        f"src/{package}/plugin.py": _PLUGIN,
        f"src/{package}/py.typed": "",
        f"tests/test_{name}.py": _TEST,
        # What `python -m grpc_tools.protoc ... config.proto` writes (see the README template).
        f"{proto}/__init__.py": "",
        f"{proto}/py.typed": "",
        f"{proto}/message_pool.py": _MESSAGE_POOL,
        f"{proto}/prism/__init__.py": "",
        f"{proto}/prism/plugins/__init__.py": "",
        f"{proto}/prism/plugins/{name}/__init__.py": "",
        f"{proto}/prism/plugins/{name}/v1/__init__.py": _CONFIG_MODULE.replace(
            "{register}", _register_call(name, config)
        ),
    }
    for relative, template in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        text = template.replace("{name}", name).replace("{package}", package)
        path.write_text(text.replace("{cls}", cls).replace("{config}", config))
    return root


def config_class_name(name: str) -> str:
    """The config message's name, ``MyCacheConfig`` for ``my_cache``.

    betterproto2 names a message's class ``pascal_case(<message name>)``, which changes some
    names (``ABCConfig`` → ``AbcConfig``). The message is given a name that function leaves
    alone, so the proto message and its Python class are called the same.
    """
    value = "".join(part.capitalize() for part in name.split("_")) + "Config"
    for _ in range(8):
        cased = pascal_case(value)
        if cased == value:
            return value
        value = cased
    raise AssertionError(f"no stable class name for plugin {name!r}")  # pragma: no cover


def _register_call(name: str, config: str) -> str:
    """The generated module's last statement, wrapped as ``ruff format`` wraps it."""
    call = "default_message_pool.register_message("
    args = [f'"prism.plugins.{name}.v1"', f'"{config}"', config]
    one_line = call + ", ".join(args) + ")"
    if len(one_line) <= _LINE_LENGTH:
        return one_line
    indented = "    " + ", ".join(args)
    if len(indented) <= _LINE_LENGTH:
        return f"{call}\n{indented}\n)"
    return call + "\n" + "".join(f"    {arg},\n" for arg in args) + ")"


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
# Regenerating src/{package}/_proto after editing protos/ (see README.md).
dev = ["betterproto2-compiler==0.10.1", "grpcio-tools>=1.60"]

[project.entry-points."prism.plugins"]
{name} = "{package}:{cls}"

[tool.setuptools.packages.find]
where = ["src"]

[tool.setuptools.package-data]
{package} = ["py.typed", "_proto/py.typed", "_proto/*.binpb"]

[tool.pytest.ini_options]
trio_mode = true

[tool.ruff]
# betterproto2-compiler formats the code it generates with ruff, and so with this line length.
line-length = 100
extend-exclude = ["src/{package}/_proto"]

[tool.mypy]
strict = true

[[tool.mypy.overrides]]
module = ["{package}._proto.*"]
ignore_errors = true
"""

_README = """\
# prism-plugin-{name}

A Prism backend plugin. See Prism's plugin development guide (docs/plugin-guide.md).

```sh
pip install -e '.[test]' && pytest
```

The plugin is found by the proxy through the entry point `prism.plugins` → `{name}`:

```yaml
namespaces:
  - name: cache
    plugin: {name: {name}}
    config: {max_keys: 10000}
```

## Configuration

`protos/prism/plugins/{name}/v1/config.proto` defines `{config}`, what an operator writes under
a namespace's `config:`. The code generated from it is in `src/{package}/_proto` (never edit
it). After changing the proto, regenerate it from this directory:

```sh
pip install -e '.[dev]'
rm -rf src/{package}/_proto
python -m grpc_tools.protoc -Iprotos --python_betterproto2_out=src/{package}/_proto \\
  --python_betterproto2_opt=client_generation=none,server_generation=none \\
  prism/plugins/{name}/v1/config.proto
```

| field | default | meaning |
|---|---|---|
| `max_keys` | 0 (unlimited) | most keys held; a new key beyond it is `RESOURCE_EXHAUSTED` |

## Operations

`get`, `set`, `delete` with the common data model (`prism.data.v1`): replace the dictionary in
`src/{package}/plugin.py` with your backend's client.
"""

_CONFIG_PROTO = """\
// Configuration of the {name} plugin.
//
// The proxy sends a namespace's `config:` mapping (from its YAML) as this message, and the SDK
// converts it strictly: unknown fields and wrong types fail Initialize with INVALID_ARGUMENT.
// Add your backend's settings here, then regenerate the code (see README.md). Proto3 cannot
// tell "unset" from zero, so give zero a meaning ("0 = the default") and document it.
syntax = "proto3";

package prism.plugins.{name}.v1;

// What an operator writes under a namespace's `config:` (InitializeRequest.config).
message {config} {
  // Most keys held at once; a set that would add one more fails with RESOURCE_EXHAUSTED
  // (overwriting an existing key always works). 0 = unlimited.
  int64 max_keys = 1;
}
"""

_MESSAGE_POOL = """\
import betterproto2

default_message_pool = betterproto2.MessagePool()
"""

# betterproto2-compiler 0.10.1's output for _CONFIG_PROTO, with the name taken out.
_CONFIG_MODULE = '''\
# Generated by the protocol buffer compiler.  DO NOT EDIT!
# sources: prism/plugins/{name}/v1/config.proto
# plugin: python-betterproto2
# This file has been @generated

__all__ = ("{config}",)

from dataclasses import dataclass

import betterproto2

from .....message_pool import default_message_pool

_COMPILER_VERSION = "0.10.1"
betterproto2.check_compiler_version(_COMPILER_VERSION)


@dataclass(eq=False, repr=False)
class {config}(betterproto2.Message):
    """
    What an operator writes under a namespace's `config:` (InitializeRequest.config).
    """

    max_keys: "int" = betterproto2.field(1, betterproto2.TYPE_INT64)
    """
    Most keys held at once; a set that would add one more fails with RESOURCE_EXHAUSTED
    (overwriting an existing key always works). 0 = unlimited.
    """


{register}
'''

_INIT = '''\
"""Prism backend plugin: {name}."""

from __future__ import annotations

from {package}._proto.prism.plugins.{name}.v1 import (
    {config},
)
from {package}.plugin import (
    {cls},
)

__all__ = [
    "{config}",
    "{cls}",
]
'''

_PLUGIN = '''\
"""The {name} plugin.

Replace the dictionary with your backend's client.
"""

from __future__ import annotations

from collections.abc import Mapping

from prism.protos.data.v1 import (
    DeleteRequest,
    DeleteResponse,
    GetRequest,
    GetResponse,
    SetRequest,
    SetResponse,
)
from prism.sdk import (
    BackendPlugin,
    InvalidArgument,
    InvalidConfig,
    OperationContext,
    ResourceExhausted,
    operation,
)

from {package}._proto.prism.plugins.{name}.v1 import (
    {config},
)


class {cls}(BackendPlugin):
    name = "{name}"
    version = "0.1.0"
    config_type = {config}
    config_required = False  # a namespace without `config:` gets all the defaults

    async def initialize(
        self,
        config: {config},
        credentials: Mapping[str, str],
        namespace: str,
    ) -> None:
        # Validate every field here: a bad one fails Initialize with INVALID_ARGUMENT, which the
        # proxy reports as namespaces[N].config.max_keys: ... (paths in the config: resolve them
        # with self.config_path(...), relative to the proxy's config file).
        if config.max_keys < 0:
            raise InvalidConfig("max_keys", "must not be negative")
        self._max_keys = config.max_keys
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
        full = self._max_keys and len(self._data) >= self._max_keys
        if full and params.key not in self._data:
            raise ResourceExhausted(f"the store is full (max_keys = {self._max_keys})")
        self._data[params.key] = params.value
        return SetResponse()

    @operation("delete", params=DeleteRequest, result=DeleteResponse)
    async def delete(self, params: DeleteRequest, ctx: OperationContext) -> DeleteResponse:
        return DeleteResponse(deleted=self._data.pop(params.key, None) is not None)
'''

_TEST = """\
from __future__ import annotations

from typing import Any

import pytest
from prism.protos.data.v1 import GetRequest, GetResponse, SetRequest
from prism.sdk import InvalidArgument, ResourceExhausted
from prism.sdk.testing import PluginHarness

from {package} import (
    {config},
    {cls},
)


@pytest.mark.parametrize("typed", [False, True])
async def test_{name}_set_then_get(typed: bool) -> None:
    async with PluginHarness({cls}, typed=typed) as h:
        await h.execute("set", SetRequest(key="a", value=b"1"))
        assert await h.execute("get", GetRequest(key="a")) == GetResponse(found=True, value=b"1")


async def test_{name}_empty_key_is_invalid_argument() -> None:
    async with PluginHarness({cls}) as h:
        with pytest.raises(InvalidArgument, match="key must not be empty"):
            await h.execute("get", GetRequest(key=""))


async def test_{name}_max_keys_limits_new_keys() -> None:
    config = {config}(max_keys=1)
    async with PluginHarness({cls}, config=config) as h:
        await h.execute("set", SetRequest(key="a", value=b"1"))
        with pytest.raises(ResourceExhausted, match=r"max_keys = 1"):
            await h.execute("set", SetRequest(key="b", value=b"2"))
        await h.execute("set", SetRequest(key="a", value=b"3"))  # overwriting always works


async def test_{name}_config_as_the_proxy_sends_it() -> None:
    # The namespace's `config:` mapping from the proxy's YAML, JSON-style names allowed.
    config = {"maxKeys": 1}
    async with PluginHarness({cls}, config=config) as h:
        await h.execute("set", SetRequest(key="a", value=b"1"))
        with pytest.raises(ResourceExhausted):
            await h.execute("set", SetRequest(key="b", value=b"2"))


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({"max_keys": -1}, "config.max_keys: must not be negative"),
        ({"max_key": 1}, "config.max_key: unknown field"),
        ({"max_keys": "many"}, "config.max_keys: expected an integer"),
        ({"max_keys": 1.5}, "config.max_keys: expected an integer"),
    ],
)
async def test_{name}_bad_config_fails_initialize(
    config: dict[str, Any],
    error: str,
) -> None:
    with pytest.raises(InvalidArgument, match=error):
        async with PluginHarness({cls}, config=config):
            pass
"""
