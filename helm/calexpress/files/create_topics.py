"""Create the calexpress topics and their dead-letter topics if they are missing (run by the chart's Job).

Reads the Kafka settings from the environment the services use (CALEXPRESS_BROKERS, CALEXPRESS_TOPIC_PREFIX,
CALEXPRESS_KAFKA_SECURITY_PROTOCOL, CALEXPRESS_KAFKA_SASL_MECHANISM, CALEXPRESS_KAFKA_USERNAME/PASSWORD) and
the topic layout from TOPIC_PARTITIONS, TOPIC_REPLICATION_FACTOR, DLQ_PARTITIONS, RAW_RETENTION_MS and
RETENTION_MS. Existing topics are left unchanged; exits non-zero on any other error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

STAGE_TOPICS = ("raw", "postisr", "characterized", "calexp")
DLQ_TOPICS = ("raw", "postisr", "characterized")


def topic_specs(env: dict[str, str]) -> list[tuple[str, int, int, dict[str, str]]]:
    """(name, partitions, replication factor, configs) for every topic calexpress uses."""
    prefix = env.get("CALEXPRESS_TOPIC_PREFIX", "calexpress.")
    partitions = int(env.get("TOPIC_PARTITIONS", "12"))
    replication = int(env.get("TOPIC_REPLICATION_FACTOR", "1"))
    dlq_partitions = int(env.get("DLQ_PARTITIONS", "1"))
    retention = env.get("RETENTION_MS", "604800000")
    specs = []
    for name in STAGE_TOPICS:
        keep = env.get("RAW_RETENTION_MS", "-1") if name == "raw" else retention
        specs.append((prefix + name, partitions, replication, {"retention.ms": keep}))
    for name in DLQ_TOPICS:
        specs.append((f"{prefix}{name}.dlq", dlq_partitions, replication, {"retention.ms": "-1"}))
    return specs


async def create_topics(env: dict[str, str]) -> list[str]:
    """Create the missing topics; returns the names created."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    kwargs: dict[str, object] = {
        "bootstrap_servers": env.get("CALEXPRESS_BROKERS", "localhost:9092"),
        "security_protocol": env.get("CALEXPRESS_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"),
        "request_timeout_ms": 30000,
    }
    if kwargs["security_protocol"].startswith("SASL"):
        kwargs.update(sasl_mechanism=env.get("CALEXPRESS_KAFKA_SASL_MECHANISM", "PLAIN"),
                      sasl_plain_username=env.get("CALEXPRESS_KAFKA_USERNAME"),
                      sasl_plain_password=env.get("CALEXPRESS_KAFKA_PASSWORD"))
    if kwargs["security_protocol"].endswith("SSL"):
        from aiokafka.helpers import create_ssl_context

        kwargs["ssl_context"] = create_ssl_context()
    admin = AIOKafkaAdminClient(**kwargs)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(name, num_partitions=p, replication_factor=r, topic_configs=c)
               for name, p, r, c in topic_specs(env) if name not in existing]
        if new:
            await admin.create_topics(new)
        return [t.name for t in new]
    finally:
        await admin.close()


def main() -> int:
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # the one-line error below says it all
    env = dict(os.environ)
    try:
        created = asyncio.run(create_topics(env))
    except Exception as exc:  # one line naming the problem, for the Job's log
        brokers = env.get("CALEXPRESS_BROKERS", "localhost:9092")
        print(f"create_topics: cannot create the topics on {brokers}: {exc}", file=sys.stderr)
        return 1
    print("created: " + (", ".join(created) if created else "nothing (all topics exist)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
