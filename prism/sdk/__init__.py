"""The Prism plugin SDK: what a backend plugin imports.

See docs/plugin-guide.md. In short: subclass ``BackendPlugin``, declare operations with
``@operation`` / ``@stream_operation``, raise the status errors below, and test with
``prism.sdk.testing.PluginHarness``. Hosts drive a plugin through ``open_plugin`` /
``PluginInstance``.
"""

from __future__ import annotations

from prism.sdk.config import InvalidConfig
from prism.sdk.errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    GrpcError,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Status,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
    error_from_text,
)
from prism.sdk.instance import METRICS_OPERATION, PluginInstance, State, open_plugin
from prism.sdk.keyvalue import KeyValueLimits
from prism.sdk.metrics import Metrics
from prism.sdk.plugin import (
    BackendPlugin,
    Credentials,
    HealthReport,
    HealthStatus,
    OperationContext,
    OperationSpec,
    OperationStream,
    operation,
    stream_operation,
)
from prism.sdk.shared import SharedResult
from prism.sdk.typed import pack, type_url, unpack

__all__ = [
    "METRICS_OPERATION",
    "Aborted",
    "AlreadyExists",
    "BackendPlugin",
    "Cancelled",
    "Credentials",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "GrpcError",
    "HealthReport",
    "HealthStatus",
    "Internal",
    "InvalidArgument",
    "InvalidConfig",
    "KeyValueLimits",
    "Metrics",
    "NotFound",
    "OperationContext",
    "OperationSpec",
    "OperationStream",
    "OutOfRange",
    "PermissionDenied",
    "PluginInstance",
    "ResourceExhausted",
    "SharedResult",
    "State",
    "Status",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "error_from_text",
    "open_plugin",
    "operation",
    "pack",
    "stream_operation",
    "type_url",
    "unpack",
]
