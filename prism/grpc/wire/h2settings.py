"""The HTTP/2 settings prism's connections advertise, and how prism configures h2."""

from __future__ import annotations

from dataclasses import dataclass

import h2.config
import h2.settings


@dataclass(frozen=True, slots=True)
class Settings:
    """HTTP/2 settings and limits for one connection."""

    initial_window_size: int = 1 << 20
    connection_window_size: int = 16 << 20
    max_frame_size: int = 1 << 14
    max_concurrent_streams: int = 1000
    max_header_list_size: int = 16 << 10

    def __post_init__(self) -> None:
        # RFC 9113 §6.5.2 limits; h2 would otherwise refuse them on every new connection.
        if not (1 << 14) <= self.max_frame_size <= (1 << 24) - 1:
            raise ValueError(f"max_frame_size must be 16384..16777215, not {self.max_frame_size}")
        for name in ("initial_window_size", "connection_window_size"):
            value = getattr(self, name)
            if not 0 < value <= (1 << 31) - 1:
                raise ValueError(f"{name} must be 1..2147483647, not {value}")

    def local_settings(self, client_side: bool) -> h2.settings.Settings:
        """The local settings to install on a new h2 connection (before its preface)."""
        return h2.settings.Settings(
            client=client_side,
            initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.initial_window_size,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: self.max_frame_size,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.max_concurrent_streams,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: self.max_header_list_size,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )


def h2_config(client_side: bool) -> h2.config.H2Configuration:
    """How prism configures h2: bytes headers, no validation or normalization.

    h2's inbound header validation cost ~15% of a unary RPC and turned peers' harmless
    quirks into connection errors (see :mod:`prism.grpc.wire.h2conn`)."""
    return h2.config.H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        validate_inbound_headers=False,
        normalize_inbound_headers=False,
    )
