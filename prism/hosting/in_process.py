"""The in-process deployment model: the plugin object lives in the proxy and is called directly
with typed objects. Each attempt imports (verified) the class, makes a fresh object, Initializes
it and serves; a crashed background task or an UNHEALTHY answer ends the attempt, and the
object is shut down before the next one is made."""

from __future__ import annotations

import trio

from prism.config import NamespaceConfig
from prism.hosting.client import InProcessClient
from prism.hosting.instance import Instance
from prism.hosting.loader import load_plugin_class
from prism.hosting.model import HostSettings, describe_plugin, initialize, watch
from prism.hosting.supervisor import supervise
from prism.sdk.instance import open_plugin


class InProcessModel:
    mode = "in_process"

    def __init__(self, settings: HostSettings, ns: NamespaceConfig, instance: Instance) -> None:
        self.settings = settings
        self.ns = ns
        self.instance = instance

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await supervise(
            self.attempt,
            self.instance,
            what=describe_plugin(self.ns),
            startup_timeout=self.ns.plugin.startup_timeout,
            task_status=task_status,
        )

    async def attempt(self, number: int, *, task_status: trio.TaskStatus[None]) -> None:
        cls = load_plugin_class(self.ns.plugin.name, self.settings.policy)
        async with open_plugin(cls()) as plugin:
            client = InProcessClient(plugin)
            self.instance.up(client, await initialize(client, self.ns, self.settings.config))
            task_status.started()
            await watch(self.ns, self.instance, client)
