"""Building the request pipeline from the configuration: one function per stage.

:func:`build_pipeline` puts the stages together in the order :mod:`prism.proxy.pipeline`
runs them; every stage is built by a function of its own below, from the configuration (and
the metrics it counts in), and returns the stage's no-op while nothing configures it. A new
stage implementation changes only its function's body.
"""

from __future__ import annotations

from prism.config import NamespaceConfig, ProxyConfig
from prism.proxy.metrics import NamespaceMetrics, ProxyMetrics
from prism.proxy.pipeline import (
    AllowAll,
    AuditLog,
    Authenticator,
    Authorizer,
    Breakers,
    ConcurrencyLimiter,
    NamespaceStages,
    NoAudit,
    NoAuthentication,
    NoBreaker,
    NoConcurrencyLimit,
    NoRateLimit,
    NoTracing,
    Pipeline,
    RateLimiter,
    Router,
    Tracer,
)

__all__ = ["build_pipeline", "namespace_stages"]


def build_pipeline(config: ProxyConfig, router: Router, metrics: ProxyMetrics) -> Pipeline:
    """The pipeline of a proxy with ``config``, routing to ``router``, counting in ``metrics``."""
    pipeline = Pipeline(
        router,
        metrics=metrics,
        tracer=tracer(config),
        authenticator=authenticator(config, metrics),
        audit=audit_log(config),
        namespace_stages=lambda ns, series: namespace_stages(config, ns, series),
    )
    for ns in config.namespaces:
        pipeline.set_namespace(ns)
    return pipeline


def namespace_stages(
    config: ProxyConfig, ns: NamespaceConfig, metrics: NamespaceMetrics
) -> NamespaceStages:
    """One namespace's stages, in the order they run."""
    return NamespaceStages(
        metrics,
        authorizer=authorizer(config, ns, metrics),
        rate_limiter=rate_limiter(config, ns, metrics),
        limiter=concurrency_limiter(config, ns, metrics),
        breakers=breakers(config, ns, metrics),
        default_timeout=default_timeout(config, ns),
    )


# -- call-level stages ------------------------------------------------------------------------


def tracer(config: ProxyConfig) -> Tracer:
    """W3C trace context from the client, or a new trace (prism/proxy/tracing.py)."""
    return NoTracing()


def authenticator(config: ProxyConfig, metrics: ProxyMetrics) -> Authenticator:
    """The caller's identity: mTLS client certificate, bearer JWT (prism/proxy/authn.py)."""
    return NoAuthentication()


def audit_log(config: ProxyConfig) -> AuditLog:
    """One structured record per call (prism/proxy/audit.py)."""
    return NoAudit()


# -- namespace-level stages ------------------------------------------------------------------


def authorizer(config: ProxyConfig, ns: NamespaceConfig, metrics: NamespaceMetrics) -> Authorizer:
    """Who may call which operations in ``ns`` (prism/proxy/authz.py)."""
    return AllowAll()


def rate_limiter(
    config: ProxyConfig, ns: NamespaceConfig, metrics: NamespaceMetrics
) -> RateLimiter:
    """Token buckets per namespace and per caller (prism/proxy/ratelimit.py)."""
    return NoRateLimit()


def concurrency_limiter(
    config: ProxyConfig, ns: NamespaceConfig, metrics: NamespaceMetrics
) -> ConcurrencyLimiter:
    """A cap of calls in flight with a bounded wait queue (prism/proxy/limits.py)."""
    return NoConcurrencyLimit()


def breakers(config: ProxyConfig, ns: NamespaceConfig, metrics: NamespaceMetrics) -> Breakers:
    """A circuit breaker per plugin instance (prism/proxy/breaker.py)."""
    return NoBreaker()


def default_timeout(config: ProxyConfig, ns: NamespaceConfig) -> float | None:
    """Seconds a unary call without a client deadline may take; None: unbounded."""
    return None
