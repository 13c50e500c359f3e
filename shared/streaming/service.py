"""The stage-service framework: consume events, run a stage, write outputs, announce, commit.

One `StageService` consumes the input topic of a stage with aiokafka (consumer
group, manual commits, no idempotent producer: Tansu does not support it with
aiokafka) and hands each event to a `StageProcessor` running in a worker thread,
so the event loop keeps heart-beating while the CPU works.

Delivery is at-least-once with idempotent outputs:

1. the processor writes every output through the Butler / `calexpress.storage`
   (atomic: never a half-written object under a final key);
2. the output event is written as a *completion record*
   (``<collection root>/_events/<stage>/<ccd key>.msgpack``) - the record is
   the proof that all outputs exist;
3. the output event is sent and acknowledged by the broker;
4. only then is the input offset committed.

A crash anywhere before 4 redelivers the input; the completion record with the
same config hash then makes the service re-announce the *same* event (same
``event_id``) without recomputing, counted as ``duplicate``.

Errors: `TransientError` and timeouts / connection errors are retried with
exponential backoff up to ``max_attempts``; anything else (bad FITS, missing
calibration or object, task failure, malformed or unknown-schema message) is
sent at once to ``<input topic>.dlq`` with the original message, error class,
message and attempt, and consumption continues.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import hashlib
import logging
import os
import signal
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import msgpack
from aiokafka.abc import ConsumerRebalanceListener

from .. import metrics, storage
from ..events import (
    Event,
    EventError,
    decode_event,
    deterministic_event_id,
    encode_event,
    event_key,
    make_event,
)
from .kafka_security import KafkaSecurity

__all__ = [
    "STAGES",
    "PermanentError",
    "ServiceSettings",
    "StageContext",
    "StageOutput",
    "StageProcessor",
    "StageService",
    "TransientError",
    "WarmCache",
    "completion_uri",
    "decode_dead_letter",
    "is_transient",
    "output_root",
    "topic_name",
]

log = logging.getLogger(__name__)

#: ``host:pid`` of this process, sent in the ``producer`` header of every output event.
_PRODUCER_ID = f"{socket.gethostname()}:{os.getpid()}"

#: stage -> (input topic, output topic, announced dataset type), topic names without prefix.
STAGES: dict[str, tuple[str, str, str]] = {
    "isr": ("raw", "postisr", "postISRCCD"),
    "characterize": ("postisr", "characterized", "icExp"),
    "calibrate": ("characterized", "calexp", "calexp"),
}


class TransientError(RuntimeError):
    """An error worth retrying (object store or broker timeout, connection reset)."""


class PermanentError(RuntimeError):
    """An error that retrying cannot fix (bad input, missing calibration, failed calibration)."""


class _Abandoned(BaseException):
    """The current CCD was abandoned at shutdown (not committed)."""


def is_transient(exc: BaseException) -> bool:
    """Return True when ``exc`` is worth retrying.

    Transient: `TransientError`, `TimeoutError` (incl. asyncio's), `ConnectionError`,
    OS errors ETIMEDOUT/ECONNRESET/ECONNREFUSED/EHOSTUNREACH, botocore/aiohttp
    connection and timeout errors, Kafka timeouts.  Everything else is permanent.
    """
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, PermanentError):
            return False
        if isinstance(exc, (TransientError, TimeoutError, asyncio.TimeoutError, ConnectionError)):
            return True
        if isinstance(exc, OSError) and exc.errno in (errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED,
                                                      errno.EHOSTUNREACH, errno.EPIPE):
            return True
        name = type(exc).__name__
        if name in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                    "ConnectionClosedError", "ServerDisconnectedError", "ClientConnectorError",
                    "KafkaTimeoutError", "RequestTimedOutError", "NodeNotReadyError",
                    "KafkaConnectionError", "NotLeaderForPartitionError", "LeaderNotAvailableError",
                    "SlowDown", "ServiceUnavailable", "InternalError"):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
        seen += 1
    return False


def topic_name(prefix: str, name: str) -> str:
    """``prefix + name`` (prefix e.g. ``calexpress.``)."""
    return f"{prefix}{name}"


def output_root(repo: str, collection: str) -> str:
    """Root of an output collection: ``<repo>/rerun/<collection>`` (Gen2 rerun layout)."""
    return storage.join(repo, "rerun", collection)


def completion_uri(repo: str, collection: str, stage: str, data_id: dict, instrument: str = "") -> str:
    """URI of the completion record of one CCD in one stage and collection."""
    key = event_key(data_id, instrument).decode().strip("/").replace("/", "_") or "ccd"
    return storage.join(output_root(repo, collection), "_events", stage, f"{key}.msgpack")


@dataclass
class ServiceSettings:
    """Everything a stage service needs; built by ``calexpress serve`` from flags and environment.

    Secrets (``s3_secret``, ``kafka_password``) are excluded from `repr`.
    """

    stage: str
    brokers: str = "127.0.0.1:9092"
    repo: str = ""
    collection: str = "live"
    topic_prefix: str = "calexpress."
    input_topic: str | None = None
    output_topic: str | None = None
    group_id: str | None = None
    s3_endpoint: str | None = None
    s3_key: str | None = None
    s3_secret: str | None = field(default=None, repr=False)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = metrics.DEFAULT_METRICS_PORT
    max_attempts: int = 4
    backoff_initial: float = 0.5
    backoff_max: float = 8.0
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 1000
    shutdown_grace: float = 30.0
    partitions: int = 3
    config_file: str | None = None
    processor: str | None = None
    client_id: str | None = None
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = "PLAIN"
    kafka_username: str | None = None
    kafka_password: str | None = field(default=None, repr=False)
    kafka_ssl_cafile: str | None = None
    log_level: str = "INFO"
    #: BLAS/OpenMP threads of the stage code (0 = the libraries' default, one per core).  One per service
    #: is fastest when the three services share a node: idle BLAS threads spin and steal the other
    #: services' cycles (in-process: the same wall time for 23 % more CPU with two threads).
    threads: int = 1
    #: longest wait of a consumer fetch for new records; the broker may hold an empty fetch this long
    #: before a new event is seen (aiokafka's default 500 ms added ~85 ms median per hop on Tansu)
    fetch_max_wait_ms: int = 50

    def __post_init__(self) -> None:
        names = STAGES.get(self.stage)
        if self.input_topic is None:
            if names is None:
                raise ValueError(f"unknown stage {self.stage!r}: give input_topic/output_topic")
            self.input_topic = topic_name(self.topic_prefix, names[0])
        if self.output_topic is None:
            if names is None:
                raise ValueError(f"unknown stage {self.stage!r}: give input_topic/output_topic")
            self.output_topic = topic_name(self.topic_prefix, names[1])
        if self.group_id is None:
            self.group_id = f"{self.topic_prefix}{self.stage}"

    @property
    def kafka_security(self) -> KafkaSecurity:
        """The Kafka connection security (TLS / SASL) of these settings."""
        return KafkaSecurity(self.kafka_security_protocol, self.kafka_sasl_mechanism, self.kafka_username,
                             self.kafka_password, self.kafka_ssl_cafile)

    def kafka_client_kwargs(self) -> dict[str, Any]:
        """Security keyword arguments passed to every aiokafka client of the service."""
        return self.kafka_security.client_kwargs()

    @property
    def dlq_topic(self) -> str:
        """Dead-letter topic of this service: ``<input topic>.dlq``."""
        return f"{self.input_topic}.dlq"

    def apply_s3_environment(self) -> None:
        """Export the S3 settings for `calexpress.storage` (``CALEXPRESS_S3_*``)."""
        if self.s3_endpoint:
            os.environ["CALEXPRESS_S3_ENDPOINT"] = self.s3_endpoint
        if self.s3_key and self.s3_secret:
            os.environ["CALEXPRESS_S3_KEY"] = self.s3_key
            os.environ["CALEXPRESS_S3_SECRET"] = self.s3_secret


@dataclass
class StageOutput:
    """What a processor returns for one CCD.

    Attributes
    ----------
    uris : `dict` [`str`, `str`]
        Dataset type -> URI of each output written (the first is the announced one).
    checksums : `dict` [`str`, `str`]
        Dataset type -> checksum (see `checksum_of`).
    quality : `dict` or `None`
        Per-CCD quality summary (final stage only).
    data_id : `dict` or `None`
        Data ID of the output if it differs from the input's (e.g. completed keys).
    """

    uris: dict[str, str]
    checksums: dict[str, str] = field(default_factory=dict)
    quality: dict[str, float | None] | None = None
    data_id: dict[str, Any] | None = None


class WarmCache:
    """A small LRU cache that counts hits and misses in ``calexpress_cache_requests_total``.

    Parameters
    ----------
    stage, name : `str`
        Metric labels (``cache`` = ``name``, e.g. ``calib``, ``refcat``, ``camera``).
    maxsize : `int`
        Entries kept.
    """

    def __init__(self, stage: str, name: str, maxsize: int = 32) -> None:
        self.stage = stage
        self.name = name
        self.maxsize = maxsize
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, loader: Callable[[], Any]) -> Any:
        """Return the cached value of ``key``, loading (and caching) it on a miss."""
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                metrics.CACHE_REQUESTS.labels(stage=self.stage, cache=self.name, result="hit").inc()
                return self._data[key]
        metrics.CACHE_REQUESTS.labels(stage=self.stage, cache=self.name, result="miss").inc()
        value = loader()
        with self._lock:
            self._data[key] = value
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._data)


class StageContext:
    """What a processor may use: settings, warm caches, output roots."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self._caches: dict[str, WarmCache] = {}

    def cache(self, name: str, maxsize: int = 32) -> WarmCache:
        """The warm cache called ``name`` (created on first use)."""
        if name not in self._caches:
            self._caches[name] = WarmCache(self.settings.stage, name, maxsize)
        return self._caches[name]

    def repo_for(self, event: Event) -> str:
        """Input repository of an event (the event's ``repo``, else the service's)."""
        return event.repo or self.settings.repo

    def collection_for(self, event: Event) -> str:
        """Output collection of an event (the event's, else the service's default)."""
        return event.collection or self.settings.collection

    def output_root(self, event: Event) -> str:
        """Root URI of the output collection of ``event``."""
        return output_root(self.repo_for(event), self.collection_for(event))


class StageProcessor:
    """Base class of the per-stage work run by a `StageService`.

    Subclasses set ``stage`` and ``output_dataset_type`` and implement `process`
    (called in a worker thread; it must write every output before returning)
    and `config_hash`.
    """

    stage: str = ""
    output_dataset_type: str = ""

    def __init__(self, context: StageContext) -> None:
        self.context = context

    def config_hash(self, event: Event) -> str:
        """Hash of the task config used for ``event`` (`calexpress.config.config_hash`)."""
        raise NotImplementedError

    def process(self, event: Event) -> StageOutput:
        """Read the input of ``event``, run the stage, write the outputs; return their URIs."""
        raise NotImplementedError

    def warm_up(self) -> None:  # noqa: B027 (optional hook)
        """Load what every CCD needs (camera, static calibrations) before consuming."""


def checksum_of(data: bytes) -> str:
    """``sha256:<hex>`` of bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def object_checksum(uri: str) -> str:
    """ETag of an S3 object (``etag:<value>``), or ``sha256:`` of a local file."""
    scheme, _ = storage.split_url(uri)
    if scheme:
        fs, path = storage.get_filesystem(uri)
        fs.invalidate_cache(path)
        info = fs.info(path)
        etag = info.get("ETag") or info.get("etag")
        if etag:
            return "etag:" + str(etag).strip('"')
    return checksum_of(storage.read_bytes(uri))


def encode_dead_letter(*, original: bytes | None, topic: str, partition: int, offset: int, key: bytes | None,
                       stage: str, exc: BaseException, attempt: int, event_id: str = "") -> bytes:
    """The msgpack dead-letter record (documented in ``docs/events.md``)."""
    from .. import __version__

    return msgpack.packb({
        "dlq_version": 1,
        "original": original or b"",
        "original_topic": topic,
        "original_partition": partition,
        "original_offset": offset,
        "original_key": key or b"",
        "event_id": event_id,
        "stage": stage,
        "error_class": type(exc).__name__,
        "error_message": str(exc)[:2000],
        "attempt": attempt,
        "failed_at": time.time(),
        "software_version": __version__,
    }, use_bin_type=True)


def decode_dead_letter(data: bytes) -> dict[str, Any]:
    """Decode a dead-letter record."""
    return msgpack.unpackb(data, raw=False)


class _RebalanceLogger(ConsumerRebalanceListener):
    """Logs partition assignments (aiokafka ConsumerRebalanceListener protocol)."""

    def __init__(self, stage: str) -> None:
        self.stage = stage

    async def on_partitions_revoked(self, revoked: Any) -> None:
        metrics.ASSIGNED_PARTITIONS.labels(stage=self.stage).set(0)
        if revoked:
            log.info("%s: partitions revoked: %s", self.stage, sorted(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        metrics.ASSIGNED_PARTITIONS.labels(stage=self.stage).set(len(assigned))
        log.info("%s: partitions assigned: %s", self.stage, sorted(tp.partition for tp in assigned))


class StageService:
    """Run one stage as a Kafka consumer/producer.

    Parameters
    ----------
    settings : `ServiceSettings`
    processor_factory : callable
        ``factory(context) -> StageProcessor``.
    """

    def __init__(self, settings: ServiceSettings,
                 processor_factory: Callable[[StageContext], StageProcessor]) -> None:
        self.settings = settings
        self.context = StageContext(settings)
        self.processor = processor_factory(self.context)
        self.stage = settings.stage
        self._stop_requested_at: float | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.stage}-work")
        self._consumer = None
        self._producer = None
        self._metrics_server: metrics.MetricsServer | None = None
        self._kafka_ok = False
        self.processed = 0
        self.abandoned = False

    # -- lifecycle -------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask the service to stop (SIGTERM): finish the current CCD within the grace period."""
        if self._stop_requested_at is None:
            self._stop_requested_at = time.monotonic()
            log.info("stop requested; finishing the current CCD (grace %.0f s)", self.settings.shutdown_grace)

    @property
    def stopping(self) -> bool:
        return self._stop_requested_at is not None

    def _ready_checks(self) -> dict[str, Callable[[], bool]]:
        def broker() -> bool:
            if not (self._kafka_ok and self._consumer is not None):
                return False
            errors = []
            for addr in self.settings.brokers.split(","):
                host, _, port = addr.strip().rpartition(":")
                try:
                    with socket.create_connection((host or "127.0.0.1", int(port)), timeout=1.0):
                        return True
                except OSError as exc:
                    errors.append(f"{addr}: {exc}")
            raise ConnectionError("; ".join(errors))

        def store() -> bool:
            repo = self.settings.repo
            if not repo:
                return True
            scheme, path = storage.split_url(repo)
            if not scheme:
                return os.path.isdir(path)
            fs, path = storage.get_filesystem(repo)
            return bool(fs.exists(path.split("/", 1)[0]))

        return {"broker": broker, "object_store": store}

    def start_metrics(self) -> metrics.MetricsServer | None:
        """Start the /metrics, /healthz, /readyz endpoint (port 0 = free port, <0 = none)."""
        if self.settings.metrics_port < 0:
            return None
        self._metrics_server = metrics.MetricsServer(self.settings.metrics_port, self.settings.metrics_host,
                                                     self._ready_checks()).start()
        return self._metrics_server

    async def _start_kafka(self) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        from .tansu import _create_topics

        s = self.settings
        security = s.kafka_client_kwargs()
        with contextlib.suppress(Exception):
            await _create_topics(s.brokers, [s.input_topic, s.output_topic, s.dlq_topic], s.partitions,
                                 security=security)
        self._producer = AIOKafkaProducer(bootstrap_servers=s.brokers, acks="all", linger_ms=0, **security,
                                          enable_idempotence=False, request_timeout_ms=15000,
                                          max_request_size=8 * 1024 * 1024,
                                          client_id=s.client_id or f"calexpress-{self.stage}")
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=s.brokers, group_id=s.group_id, enable_auto_commit=False,
            auto_offset_reset="earliest", session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=s.heartbeat_interval_ms, max_poll_interval_ms=3_600_000,
            fetch_max_wait_ms=s.fetch_max_wait_ms,
            client_id=s.client_id or f"calexpress-{self.stage}", **security)
        await self._consumer.start()
        self._consumer.subscribe([s.input_topic], listener=_RebalanceLogger(self.stage))
        self._kafka_ok = True

    async def _stop_kafka(self) -> None:
        self._kafka_ok = False
        for client in (self._consumer, self._producer):
            if client is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.stop(), 10)

    async def run(self, max_events: int | None = None) -> int:
        """Consume until stopped (SIGTERM/SIGINT) or ``max_events`` handled; return events handled."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self.request_stop)
        metrics.init_stage_metrics(self.stage)
        await loop.run_in_executor(self._executor, self.processor.warm_up)
        await self._start_kafka()
        log.info("%s service: %s -> %s (group %s, default collection %s)", self.stage,
                 self.settings.input_topic, self.settings.output_topic, self.settings.group_id,
                 self.settings.collection)
        handled = 0
        abandoned = False
        try:
            while not self.stopping:
                batch = await self._consumer.getmany(timeout_ms=500, max_records=1)
                for tp, msgs in batch.items():
                    for msg in msgs:
                        await self._handle(tp, msg)
                        handled += 1
                if max_events is not None and handled >= max_events:
                    break
        except _Abandoned:
            abandoned = True
            self.abandoned = True
            log.warning("abandoned the current CCD at shutdown; it was not committed")
        finally:
            await self._stop_kafka()
            self._executor.shutdown(wait=not abandoned, cancel_futures=True)
        return handled

    # -- one message -----------------------------------------------------------------------------
    async def _run_in_worker(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` in the worker thread; abandon it if a stop outlives the grace period."""
        fut = asyncio.get_running_loop().run_in_executor(self._executor, fn)
        while True:
            done, _ = await asyncio.wait({fut}, timeout=0.2)
            if done:
                return fut.result()
            if self.stopping:
                if time.monotonic() - self._stop_requested_at > self.settings.shutdown_grace:
                    raise _Abandoned()

    def _update_lag(self, tp: Any, offset: int) -> None:
        with contextlib.suppress(Exception):
            hw = self._consumer.highwater(tp)
            if hw is not None:
                metrics.CONSUMER_LAG.labels(stage=self.stage, topic=tp.topic,
                                            partition=str(tp.partition)).set(max(0, hw - offset - 1))

    async def _handle(self, tp: Any, msg: Any) -> None:
        self._update_lag(tp, msg.offset)
        try:
            event = decode_event(msg.value)
        except EventError as exc:
            log.warning("%s[%d]@%d: %s -> dead letter", tp.topic, tp.partition, msg.offset, exc)
            await self._dead_letter(msg, exc, attempt=1)
            await self._commit(tp, msg.offset)
            return
        metrics.INFLIGHT.labels(stage=self.stage).inc()
        t0 = time.monotonic()
        try:
            await self._process_with_retries(tp, msg, event)
        finally:
            metrics.INFLIGHT.labels(stage=self.stage).dec()
            metrics.STAGE_DURATION.labels(stage=self.stage).observe(time.monotonic() - t0)

    async def _process_with_retries(self, tp: Any, msg: Any, event: Event) -> None:
        attempt = event.attempt
        delay = self.settings.backoff_initial
        tries = 0
        while True:
            tries += 1
            try:
                work = functools.partial(self._produce_outputs, event, attempt)
                out_event, duplicate = await self._run_in_worker(work)
                break
            except _Abandoned:
                raise
            except Exception as exc:
                if is_transient(exc) and tries < self.settings.max_attempts and not self.stopping:
                    log.warning("%s %s: transient %s: %s; retry %d in %.1f s", self.stage, event.data_id,
                                type(exc).__name__, exc, tries, delay)
                    metrics.RETRIES.labels(stage=self.stage).inc()
                    metrics.EVENTS.labels(stage=self.stage, outcome="retried").inc()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.settings.backoff_max)
                    attempt += 1
                    continue
                if is_transient(exc) and self.stopping:
                    raise _Abandoned() from exc
                log.error("%s %s failed: %s: %s -> dead letter", self.stage, event.data_id,
                          type(exc).__name__, exc)
                metrics.EVENTS.labels(stage=self.stage, outcome="failed").inc()
                await self._dead_letter(msg, exc, attempt=attempt, event_id=event.event_id)
                await self._commit(tp, msg.offset)
                return
        await self._announce(out_event)
        await self._commit(tp, msg.offset)
        now = time.time()
        metrics.EVENTS.labels(stage=self.stage, outcome="duplicate" if duplicate else "processed").inc()
        if not duplicate:
            latency = max(0.0, now - out_event.announce_time)
            metrics.END_TO_END_LATENCY.labels(stage=self.stage).observe(latency)
            if out_event.quality:
                for k, v in out_event.quality.items():
                    if v is not None:
                        metrics.CCD_QUALITY.labels(quality=k).set(v)
        metrics.LAST_CCD_TIMESTAMP.labels(stage=self.stage).set(now)
        self.processed += 1

    def _produce_outputs(self, event: Event, attempt: int) -> tuple[Event, bool]:
        """Worker thread: duplicate check, processing, completion record. Returns (event, duplicate)."""
        ctx = self.context
        repo, collection = ctx.repo_for(event), ctx.collection_for(event)
        chash = self.processor.config_hash(event)
        record = completion_uri(repo, collection, self.stage, event.data_id, event.instrument)
        previous = self._completed(record, chash)
        if previous is not None:
            log.info("%s %s: outputs exist with config %s; re-announcing", self.stage, event.data_id, chash)
            return previous, True
        out = self.processor.process(event)
        data_id = out.data_id or event.data_id
        dtype = self.processor.output_dataset_type or next(iter(out.uris))
        out_event = make_event(
            dtype, data_id, out.uris, stage=self.stage, checksums=out.checksums, config_hash=chash,
            attempt=attempt, quality=out.quality, parent=event, collection=collection, repo=repo,
            event_id=deterministic_event_id(collection, dtype, data_id, chash, event.instrument))
        storage.atomic_write(record, encode_event(out_event))
        return out_event, False

    def _completed(self, record: str, chash: str) -> Event | None:
        """The stored output event if the outputs are complete with this config hash, else None."""
        try:
            data = storage.read_bytes(record)
        except FileNotFoundError:
            return None
        try:
            previous = decode_event(data)
        except EventError as exc:
            log.warning("ignoring unreadable completion record %s: %s", record, exc)
            return None
        if previous.config_hash != chash:
            return None
        if not all(storage.exists(uri) for uri in previous.uris.values()):
            return None
        return previous

    async def _announce(self, event: Event) -> None:
        data = encode_event(event)
        delay = self.settings.backoff_initial
        for attempt in range(1, self.settings.max_attempts + 1):
            try:
                await self._producer.send_and_wait(self.settings.output_topic, data, key=event.key,
                                                   headers=self._headers(event))
                return
            except Exception as exc:
                if attempt >= self.settings.max_attempts or not is_transient(exc):
                    raise
                log.warning("announce failed (%s); retry in %.1f s", exc, delay)
                metrics.RETRIES.labels(stage=self.stage).inc()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.backoff_max)

    def _headers(self, event: Event) -> list[tuple[str, bytes]]:
        return [("stage", self.stage.encode()), ("producer", _PRODUCER_ID.encode()),
                ("trace-id", event.trace_id.encode())]

    async def _dead_letter(self, msg: Any, exc: BaseException, attempt: int, event_id: str = "") -> None:
        data = encode_dead_letter(original=msg.value, topic=msg.topic, partition=msg.partition,
                                  offset=msg.offset, key=msg.key, stage=self.stage, exc=exc, attempt=attempt,
                                  event_id=event_id)
        await self._producer.send_and_wait(self.settings.dlq_topic, data, key=msg.key)
        metrics.DEAD_LETTERS.labels(stage=self.stage, error_class=type(exc).__name__).inc()
        metrics.EVENTS.labels(stage=self.stage, outcome="dead_lettered").inc()

    async def _commit(self, tp: Any, offset: int) -> None:
        from aiokafka.structs import OffsetAndMetadata

        try:
            await self._consumer.commit({tp: OffsetAndMetadata(offset + 1, "")})
        except Exception as exc:  # e.g. partition revoked during the CCD: the new owner re-announces
            log.warning("commit of %s@%d failed (%s); the event will be redelivered", tp, offset, exc)


def load_processor_factory(spec: str) -> Callable[[StageContext], StageProcessor]:
    """Import ``module:attribute`` naming a processor factory (class or function)."""
    import importlib

    module, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"processor spec must be module:factory, got {spec!r}")
    return getattr(importlib.import_module(module), attr)


def stage_processor_factory(stage: str) -> Callable[[StageContext], StageProcessor]:
    """The processor factory of a built-in stage, imported lazily from ``calexpress.<stage>.service``."""
    import importlib

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose from {', '.join(STAGES)}")
    module = importlib.import_module(f"calexpress.{stage}.service")
    return module.make_processor


def limit_threads(threads: int) -> None:
    """Limit the BLAS/OpenMP thread pools of this process to ``threads`` (0 or less: leave them).

    Pools already loaded are limited at once (threadpoolctl); libraries loaded later (scipy's own
    OpenBLAS, imported with the stage code) read the environment variables set here.
    """
    if threads > 0:
        from threadpoolctl import threadpool_limits

        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(threads)
        threadpool_limits(limits=threads)


def run_service(settings: ServiceSettings, factory: Callable[[StageContext], StageProcessor] | None = None,
                max_events: int | None = None) -> int:
    """Build and run a service until stopped; return the number of events handled."""
    settings.apply_s3_environment()
    limit_threads(settings.threads)
    if factory is None:
        factory = (load_processor_factory(settings.processor) if settings.processor
                   else stage_processor_factory(settings.stage))
    service = StageService(settings, factory)
    server = service.start_metrics()
    try:
        return asyncio.run(service.run(max_events=max_events))
    finally:
        if server is not None:
            server.stop()
        if service.abandoned:
            # the worker thread still runs the abandoned CCD: leave without waiting for it
            logging.shutdown()
            os._exit(0)


__all__ += ["checksum_of", "decode_dead_letter", "encode_dead_letter", "limit_threads",
            "load_processor_factory", "object_checksum", "run_service", "stage_processor_factory"]
