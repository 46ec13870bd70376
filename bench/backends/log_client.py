"""The `backends-log` suite's load client: Kafka and NATS JetStream, direct or through the proxy.

`python -m bench.backends.log_client` reads a JSON plan on stdin and prints one JSON document.
Plans (`system` kafka or nats, `kind` direct or proxy, `op` produce or consume):

- `produce`: `concurrency` producers share `calls` closed-loop produces of a 100-byte value
  (key `k<i>`), each timed from the call to its acknowledgement (Kafka `acks=all`; JetStream's
  PubAck). Direct: aiokafka's `send_and_wait` / nats-py's `js.publish`, one client shared by the
  producers (as the plugin shares one); proxy: grpcio's asyncio client, Execute `produce`.
- `consume`: `calls` records are produced into a fresh topic first (directly), then one consumer
  in a fresh group reads them all, acknowledging each batch (Kafka: a commit per batch; JetStream:
  an ack per record, as the plugin does; proxy: one ConsumeAck per 50 records, max_in_flight
  100). Reported: records/s from the first record received to the last (a Kafka group's join,
  seconds on Tansu, is not the consumer's throughput).
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

VALUE = bytes(range(100))
ACK_EVERY = 50
IN_FLIGHT = 100
PARTITIONS = 4


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentiles(latencies_ns: list[int]) -> dict[str, float]:
    latencies_ns.sort()
    n = len(latencies_ns)
    return {
        "p50_us": latencies_ns[n // 2] / 1000,
        "p99_us": latencies_ns[min(n - 1, int(n * 0.99))] / 1000,
    }


async def produce_load(call: Callable[[int], Awaitable[None]], plan: dict[str, Any]) -> Any:
    concurrency = plan["concurrency"]
    latencies: list[int] = []

    async def worker(offset: int, count: int, record: bool) -> None:
        for n in range(count):
            start = time.perf_counter_ns()
            await call(offset + n * concurrency)
            if record:
                latencies.append(time.perf_counter_ns() - start)

    async def phase(total: int, record: bool) -> None:
        per = max(1, total // concurrency)
        await asyncio.gather(*(worker(w, per, record) for w in range(concurrency)))

    await phase(plan["warmup"], False)
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    await phase(plan["calls"], True)
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    return {
        "msgs_per_s": len(latencies) / elapsed,
        "client_cpu_us": cpu / len(latencies) * 1e6,
        **percentiles(latencies),
    }


# -- Kafka ------------------------------------------------------------------------------------


async def kafka_topic(plan: dict[str, Any], name: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=plan["bootstrap"])
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, PARTITIONS, 1)])
    finally:
        await admin.close()


async def kafka_fill(plan: dict[str, Any], topic: str, count: int) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=plan["bootstrap"], acks="all")
    await producer.start()
    try:
        futures = [await producer.send(topic, VALUE, key=f"k{i}".encode()) for i in range(count)]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def kafka_direct_produce(plan: dict[str, Any]) -> Any:
    from aiokafka import AIOKafkaProducer

    topic = f"bench-produce-{uuid.uuid4().hex[:8]}"
    await kafka_topic(plan, topic)
    producer = AIOKafkaProducer(bootstrap_servers=plan["bootstrap"], acks="all")
    await producer.start()
    try:

        async def call(i: int) -> None:
            await producer.send_and_wait(topic, VALUE, key=f"k{i}".encode())

        return await produce_load(call, plan)
    finally:
        await producer.stop()


async def kafka_direct_consume(plan: dict[str, Any], topic: str) -> tuple[float, float, int]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=plan["bootstrap"],
        group_id=f"bench-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        got, first = 0, 0.0
        while got < plan["calls"]:
            batches = await consumer.getmany(timeout_ms=1000, max_records=IN_FLIGHT)
            count = sum(len(records) for records in batches.values())
            if count and not first:
                first = time.perf_counter()
            got += count
            if count:
                await consumer.commit()
        return first, time.perf_counter(), got
    finally:
        await consumer.stop()


# -- NATS -------------------------------------------------------------------------------------


def nats_names(topic: str) -> tuple[str, str]:
    """The nats plugin's stream and subject for ``topic`` (letters, digits, '-': unescaped)."""
    return f"prism-{topic}", f"prism.log.{topic}"


async def nats_connect(plan: dict[str, Any]) -> Any:
    import nats

    return await nats.connect(plan["nats_url"], user=plan["nats_user"], password=plan["nats_pw"])


async def nats_stream(js: Any, topic: str) -> str:
    import nats.js.api

    stream, subject = nats_names(topic)
    await js.add_stream(
        nats.js.api.StreamConfig(
            name=stream, subjects=[subject], storage=nats.js.api.StorageType.FILE
        )
    )
    return subject


async def nats_direct_produce(plan: dict[str, Any]) -> Any:
    nc = await nats_connect(plan)
    try:
        js = nc.jetstream()
        subject = await nats_stream(js, f"bench-produce-{uuid.uuid4().hex[:8]}")

        async def call(i: int) -> None:
            await js.publish(subject, VALUE, headers={"Prism-Key": f"k{i}"})

        return await produce_load(call, plan)
    finally:
        await nc.close()


async def nats_fill(plan: dict[str, Any], topic: str, count: int) -> None:
    nc = await nats_connect(plan)
    try:
        js = nc.jetstream()
        subject = await nats_stream(js, topic)
        for start in range(0, count, 100):
            await asyncio.gather(
                *(js.publish(subject, VALUE) for _ in range(min(100, count - start)))
            )
    finally:
        await nc.close()


async def nats_direct_consume(plan: dict[str, Any], topic: str) -> tuple[float, float, int]:
    import nats.errors

    _, subject = nats_names(topic)
    nc = await nats_connect(plan)
    try:
        js = nc.jetstream()
        subscription = await js.pull_subscribe(subject, durable=f"bench-{uuid.uuid4().hex[:8]}")
        got, first = 0, 0.0
        while got < plan["calls"]:
            try:
                messages = await subscription.fetch(IN_FLIGHT, timeout=1)
            except nats.errors.TimeoutError:
                continue
            if messages and not first:
                first = time.perf_counter()
            for message in messages:
                await message.ack()
            got += len(messages)
        return first, time.perf_counter(), got
    finally:
        await nc.close()


# -- through the proxy ------------------------------------------------------------------------


async def proxy_produce(plan: dict[str, Any]) -> Any:
    import grpc

    from prism._proto.prism.data.v1 import ProduceRequest
    from prism._proto.prism.proxy.v1 import ExecuteRequest
    from prism.sdk.typed import pack

    topic = f"bench-produce-{uuid.uuid4().hex[:8]}"
    if plan["system"] == "kafka":
        await kafka_topic(plan, topic)
    requests = [
        bytes(
            ExecuteRequest(
                namespace=plan["namespace"],
                operation="produce",
                typed_params=pack(ProduceRequest(topic=topic, key=f"k{i}", value=VALUE)),
            )
        )
        for i in range(1000)
    ]
    async with grpc.aio.insecure_channel(
        plan["address"], options=[("grpc.enable_retries", 0)]
    ) as channel:
        execute = channel.unary_unary("/prism.proxy.v1.DataProxy/Execute")

        async def call(i: int) -> None:
            await execute(requests[i % len(requests)])  # errors are the call's status

        return await produce_load(call, plan)


async def proxy_consume(plan: dict[str, Any], topic: str) -> tuple[float, float, int]:
    import grpc

    from prism._proto.prism.data.v1 import ConsumeAck, ConsumeRequest, LogRecord, RecordPosition
    from prism._proto.prism.proxy.v1 import StreamRequest, StreamResponse
    from prism.sdk.typed import pack, unpack

    async with grpc.aio.insecure_channel(plan["address"]) as channel:
        call = channel.stream_stream("/prism.proxy.v1.DataProxy/ExecuteStream")()
        request = ConsumeRequest(
            topic=topic, group=f"bench-{uuid.uuid4().hex[:8]}", max_in_flight=IN_FLIGHT
        )
        await call.write(
            bytes(
                StreamRequest(
                    namespace=plan["namespace"], operation="consume", typed_params=pack(request)
                )
            )
        )
        got, first = 0, 0.0
        positions: list[RecordPosition] = []
        while got < plan["calls"]:
            raw = await call.read()
            if raw is grpc.aio.EOF:
                raise RuntimeError("the consume stream ended early")
            response = StreamResponse.parse(raw)
            if response.is_final:
                continue
            record = unpack(response.typed_result, LogRecord)
            if not first:
                first = time.perf_counter()
            got += 1
            positions.append(RecordPosition(partition=record.partition, offset=record.offset))
            if len(positions) >= ACK_EVERY or got >= plan["calls"]:
                ack = StreamRequest(typed_params=pack(ConsumeAck(records=positions)))
                await call.write(bytes(ack))
                positions = []
        end = time.perf_counter()
        call.cancel()
        return first, end, got


async def consume(plan: dict[str, Any]) -> Any:
    topic = f"bench-consume-{uuid.uuid4().hex[:8]}"
    if plan["system"] == "kafka":
        await kafka_topic(plan, topic)
        await kafka_fill(plan, topic, plan["calls"])
        reader = kafka_direct_consume if plan["kind"] == "direct" else proxy_consume
    else:
        await nats_fill(plan, topic, plan["calls"])
        reader = nats_direct_consume if plan["kind"] == "direct" else proxy_consume
    cpu0 = cpu_seconds()
    first, end, got = await reader(plan, topic)
    return {
        "msgs_per_s": (got - 1) / max(end - first, 1e-9),
        "client_cpu_us": (cpu_seconds() - cpu0) / got * 1e6,
    }


async def main_async(plan: dict[str, Any]) -> Any:
    if plan["op"] == "consume":
        return await consume(plan)
    if plan["kind"] == "proxy":
        return await proxy_produce(plan)
    if plan["system"] == "kafka":
        return await kafka_direct_produce(plan)
    return await nats_direct_produce(plan)


def main() -> None:
    plan = json.load(sys.stdin)
    json.dump(asyncio.run(main_async(plan)), sys.stdout)


if __name__ == "__main__":
    main()
