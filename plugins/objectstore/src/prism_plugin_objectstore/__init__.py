"""Prism backend plugin: the object contract on an S3-compatible API (SeaweedFS, MinIO, S3)."""

from __future__ import annotations

from prism_plugin_objectstore._proto.prism.plugins.objectstore.v1 import ObjectStoreConfig
from prism_plugin_objectstore.plugin import ObjectStorePlugin

__all__ = ["ObjectStoreConfig", "ObjectStorePlugin"]
