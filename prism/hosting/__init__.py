"""The proxy side of plugins: verification, sidecar process supervision and the handshake."""
