"""grpcio echo server, the classic synchronous API: `grpc.server` with a thread pool.

16 worker threads: enough that the 64 concurrent streams of the unary scenario never wait on an
idle pool for long, few enough that GIL hand-offs between threads do not dominate. grpcio's C
core does the HTTP/2 work on its own threads; the handlers run on the pool. `--compression
gzip` compresses responses (for clients that accept it), as `grpc.server(compression=...)`.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from bench.servers._common import HOST, MAX_MESSAGE_BYTES, parse_args

WORKERS = 16


def main() -> None:
    args = parse_args(__doc__ or "", compression=True)
    import echo_pb2  # type: ignore[import-not-found]  # generated at bench run time
    import echo_pb2_grpc  # type: ignore[import-not-found]

    class Echo(echo_pb2_grpc.EchoServicer):  # type: ignore[misc]
        def Unary(self, request: Any, context: Any) -> Any:
            return request

        def ServerStream(self, request: Any, context: Any) -> Iterator[Any]:
            message = echo_pb2.EchoMessage(payload=bytes(request.size))
            for _ in range(request.count):
                yield message

        def ClientStream(self, requests: Iterator[Any], context: Any) -> Any:
            count = total = 0
            for message in requests:
                count += 1
                total += len(message.payload)
            return echo_pb2.StreamSummary(count=count, bytes=total)

    server = grpc.server(
        ThreadPoolExecutor(max_workers=WORKERS),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
        compression=grpc.Compression.Gzip if args.compression == "gzip" else None,
    )
    echo_pb2_grpc.add_EchoServicer_to_server(Echo(), server)
    server.add_insecure_port(f"{HOST}:{args.port}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
