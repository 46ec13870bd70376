"""grpcio echo server on its asyncio API (`grpc.aio`). Not in the default server set."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from bench.servers._common import HOST, MAX_MESSAGE_BYTES, parse_args


async def serve(port: int) -> None:
    import echo_pb2  # type: ignore[import-not-found]  # generated at bench run time
    import echo_pb2_grpc  # type: ignore[import-not-found]

    class Echo(echo_pb2_grpc.EchoServicer):  # type: ignore[misc]
        async def Unary(self, request: Any, context: Any) -> Any:
            return request

        async def ServerStream(self, request: Any, context: Any) -> AsyncIterator[Any]:
            message = echo_pb2.EchoMessage(payload=bytes(request.size))
            for _ in range(request.count):
                yield message

        async def ClientStream(self, requests: AsyncIterator[Any], context: Any) -> Any:
            count = total = 0
            async for message in requests:
                count += 1
                total += len(message.payload)
            return echo_pb2.StreamSummary(count=count, bytes=total)

    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ]
    )
    echo_pb2_grpc.add_EchoServicer_to_server(Echo(), server)
    server.add_insecure_port(f"{HOST}:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    asyncio.run(serve(parse_args(__doc__ or "").port))


if __name__ == "__main__":
    main()
