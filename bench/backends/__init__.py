"""The `backends` suite: real backends through the proxy beside their own clients (one module
per backend: postgres.py; its load client postgres_client.py; the driver comparison
postgres_drivers.py; Kafka and NATS JetStream: log.py, its client log_client.py)."""
