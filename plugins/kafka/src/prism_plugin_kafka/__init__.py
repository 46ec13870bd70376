"""Prism backend plugin: the Kafka log/queue contract on aiokafka."""

from __future__ import annotations

from prism_plugin_kafka._proto.prism.plugins.kafka.v1 import KafkaConfig
from prism_plugin_kafka.plugin import KafkaPlugin

__all__ = ["KafkaConfig", "KafkaPlugin"]
