"""The ``fleet`` section: what the proxies of one fleet share. ``fleet.redis`` is the Redis
that holds the fleet's rate limits (a namespace's ``traffic.rate_limit.scope: fleet``,
:mod:`prism.proxy.fleetlimit`); none: every limit is the proxy's own.

The password keeps its secret reference (``{{ secret:NAME }}``, ``{{ env:NAME }}``,
``{{ file:PATH }}``) until the proxy starts, and never appears in errors or logs.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, ValidationInfo, field_validator

from prism.config._model import Model
from prism.config._types import Address, PositiveInt, Seconds, Text, base_of
from prism.config.secrets import absolute_file_references, parse_credential

__all__ = ["FleetConfig", "FleetRedisConfig"]


class FleetRedisConfig(Model):
    """How every proxy of the fleet reaches the Redis its fleet limits live in."""

    address: Address = "127.0.0.1:6379"
    """host:port of the Redis server (a single server or a primary: the limits' keys are
    written there)."""
    username: Text | None = None
    """The ACL user (Redis 6+); none: the default user."""
    password: Text | None = Field(default=None, repr=False)
    """The password, usually a reference (``{{ secret:NAME }}``) read when the proxy starts;
    none: no AUTH."""
    db: Annotated[int, Field(ge=0, le=15)] = 0
    """The database number."""
    key_prefix: Text = "prism:ratelimit:"
    """Prefix of the limits' keys (one key per namespace): proxies that share it share limits."""
    call_timeout: Seconds = 0.25
    """Seconds a Redis call (connect included) may take before it counts as failed: Redis is
    then treated as unreachable until it answers a probe again."""
    reconnect_max: Seconds = 5.0
    """Longest pause between probes of an unreachable Redis (the pause starts at 0.1 s and
    doubles up to this)."""
    max_connections: PositiveInt = 4
    """Connections to Redis one proxy keeps open at most (refills of different namespaces run
    at once; one namespace has one refill in flight at a time)."""

    @field_validator("password")
    @classmethod
    def _password(cls, password: str | None, info: ValidationInfo) -> str | None:
        if password is None:
            return None
        try:
            parse_credential(password)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        base = base_of(info)
        return password if base is None else absolute_file_references(password, base)


class FleetConfig(Model):
    """What the proxies of one fleet share."""

    redis: FleetRedisConfig | None = None
    """The Redis of the fleet's rate limits (``scope: fleet``); none: no fleet limit."""
