"""Building the request pipeline from the configuration: one function per stage.

:func:`build_pipeline` puts the stages together in the order :mod:`prism.proxy.pipeline`
runs them; every stage is built by a function of its own below, from the configuration (and
the metrics it counts in), and returns the stage's no-op while nothing configures it. A new
stage implementation changes only its function's body.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prism.config import ConfigError, NamespaceConfig, ProxyConfig
from prism.proxy.audit import AuditLog as AuditFile
from prism.proxy.authn import build_authenticator
from prism.proxy.authz import NamespaceAuthorizer
from prism.proxy.breaker import InstanceBreakers
from prism.proxy.limits import ConcurrencyLimit
from prism.proxy.metrics import NamespaceMetrics, ProxyMetrics
from prism.proxy.pipeline import (
    AuditLog,
    Authenticator,
    Authorizer,
    Breakers,
    ConcurrencyLimiter,
    NamespaceStages,
    NoAudit,
    NoBreaker,
    NoConcurrencyLimit,
    NoRateLimit,
    Pipeline,
    RateLimiter,
    Router,
    Tracer,
)
from prism.proxy.ratelimit import TokenBuckets
from prism.proxy.tracing import ExportingTracer, LogContextOnly, OtelSpans, W3CTracer

if TYPE_CHECKING:
    from prism.proxy.fleetlimit import FleetRedis

__all__ = ["build_pipeline", "namespace_stages"]


def build_pipeline(config: ProxyConfig, router: Router, metrics: ProxyMetrics) -> Pipeline:
    """The pipeline of a proxy with ``config``, routing to ``router``, counting in ``metrics``."""
    redis = fleet_redis(config, metrics)
    pipeline = Pipeline(
        router,
        metrics=metrics,
        tracer=tracer(config),
        authenticator=authenticator(config, metrics),
        audit=audit_log(config),
        namespace_stages=lambda ns, series: namespace_stages(config, ns, series, redis),
        background=() if redis is None else (redis,),
    )
    for ns in config.namespaces:
        pipeline.set_namespace(ns)
    return pipeline


def namespace_stages(
    config: ProxyConfig,
    ns: NamespaceConfig,
    metrics: NamespaceMetrics,
    redis: FleetRedis | None = None,
) -> NamespaceStages:
    """One namespace's stages, in the order they run (``redis``: the fleet limits' Redis)."""
    return NamespaceStages(
        metrics,
        authorizer=authorizer(config, ns, metrics),
        rate_limiter=rate_limiter(config, ns, metrics, redis),
        limiter=concurrency_limiter(config, ns, metrics),
        breakers=breakers(config, ns, metrics),
        default_timeout=default_timeout(config, ns),
    )


# -- call-level stages ------------------------------------------------------------------------


def tracer(config: ProxyConfig) -> Tracer:
    """W3C trace context from the client, or a new trace (prism/proxy/tracing.py); spans
    exported over OTLP when ``tracing.otlp_endpoint`` is set."""
    plugins = {ns.name: ns.plugin.name for ns in config.namespaces}
    settings = config.tracing
    if not settings.enabled:
        return LogContextOnly(plugins)
    if settings.otlp_endpoint is None:
        return W3CTracer(plugins)
    return ExportingTracer(plugins, OtelSpans(settings.otlp_endpoint, settings.service_name))


def authenticator(config: ProxyConfig, metrics: ProxyMetrics) -> Authenticator:
    """The caller's identity: mTLS client certificate, bearer JWT (prism/proxy/authn.py)."""
    return build_authenticator(config, metrics)


def audit_log(config: ProxyConfig) -> AuditLog:
    """One structured record per call (prism/proxy/audit.py): to ``audit.file``, else to
    the ``prism.audit`` logger, while ``audit.enabled``."""
    audit = config.audit
    if not audit.enabled:
        return NoAudit()
    return AuditFile(audit.file, flush_interval=audit.flush_interval)


# -- namespace-level stages ------------------------------------------------------------------


def authorizer(config: ProxyConfig, ns: NamespaceConfig, metrics: NamespaceMetrics) -> Authorizer:
    """Who may call which operations in ``ns`` (prism/proxy/authz.py): deny by default for
    callers without credentials, ``access.rules`` for the others."""
    return NamespaceAuthorizer(ns.name, ns.access, metrics.denied)


def fleet_redis(config: ProxyConfig, metrics: ProxyMetrics) -> FleetRedis | None:
    """The connection to ``fleet.redis`` that fleet limits share (prism/proxy/fleetlimit.py),
    its password read now; None without ``fleet.redis``."""
    if config.fleet.redis is None:
        return None
    # Imported only for a fleet: coredis alone adds ~20 MiB to the proxy's resident size.
    from prism.proxy.fleetlimit import FleetRedis

    return FleetRedis(config.fleet.redis, config.fleet_redis_password(), metrics)


def rate_limiter(
    config: ProxyConfig,
    ns: NamespaceConfig,
    metrics: NamespaceMetrics,
    redis: FleetRedis | None = None,
) -> RateLimiter:
    """Token buckets per namespace and per caller (prism/proxy/ratelimit.py); the namespace's
    own in Redis for the fleet (``scope: fleet``, prism/proxy/fleetlimit.py)."""
    traffic = ns.traffic
    if traffic.rate_limit is None and traffic.caller_rate_limit is None:
        return NoRateLimit()
    limit = traffic.rate_limit
    if limit is not None and limit.scope == "fleet":
        if redis is None:  # a reload cannot add fleet.redis (restart required for fleet)
            raise ConfigError(
                f"{config.path_of(ns.name)}.traffic.rate_limit.scope: a fleet limit needs "
                "fleet.redis, which this proxy started without (restart it)"
            )
        from prism.proxy.fleetlimit import FleetLimit

        return FleetLimit(ns.name, limit, redis, metrics, traffic.caller_rate_limit)
    return TokenBuckets(
        ns.name, metrics.rate_limited, traffic.rate_limit, traffic.caller_rate_limit
    )


def concurrency_limiter(
    config: ProxyConfig, ns: NamespaceConfig, metrics: NamespaceMetrics
) -> ConcurrencyLimiter:
    """A cap of calls in flight with a bounded wait queue (prism/proxy/limits.py)."""
    if ns.traffic.concurrency is None:
        return NoConcurrencyLimit()
    return ConcurrencyLimit(ns.name, ns.traffic.concurrency, metrics)


def breakers(config: ProxyConfig, ns: NamespaceConfig, metrics: NamespaceMetrics) -> Breakers:
    """A circuit breaker per plugin instance (prism/proxy/breaker.py)."""
    if not ns.traffic.breaker.enabled:
        return NoBreaker()
    return InstanceBreakers(ns.name, ns.traffic.breaker, metrics)


def default_timeout(config: ProxyConfig, ns: NamespaceConfig) -> float | None:
    """Seconds a unary call without a client deadline may take; None: unbounded."""
    return ns.traffic.default_timeout
