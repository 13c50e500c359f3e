"""Announce raw frames (``calexpress publish``) and replay a topic (``calexpress replay``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .. import storage
from ..events import Event, EventError, decode_event, encode_event, make_event

__all__ = ["RawAnnouncement", "announce_raws", "describe_raw", "list_raw_locations", "replay_topic",
           "send_events"]

log = logging.getLogger(__name__)

_STRUCTURAL = ("XTENSION", "PCOUNT", "GCOUNT")
_RAW_SUFFIXES = (".fits", ".fits.gz", ".fits.fz", ".fit", ".fts")


@dataclass
class RawAnnouncement:
    """A raw frame ready to announce: its URI, data ID, camera and observation time."""

    uri: str
    data_id: dict[str, Any]
    instrument: str
    observation_time: float | None
    checksum: str


def list_raw_locations(sources: Sequence[str]) -> list[str]:
    """Expand files, folders, globs and ``s3://`` prefixes into raw-frame locations (sorted)."""
    out: list[str] = []
    for src in sources:
        if any(ch in src for ch in "*?["):
            found = storage.glob(src)
        elif storage.isdir(src):
            base = src.rstrip("/")
            found = [storage.join(base, n) for n in storage.listdir(base)]
            found = [f for f in found if not storage.isdir(f)] + [
                g for d in found if storage.isdir(d) for g in list_raw_locations([d])]
        else:
            found = [src]
        out.extend(f for f in found if f.lower().endswith(_RAW_SUFFIXES))
    return sorted(dict.fromkeys(out))


def describe_raw(uri: str, camera: Any = None) -> tuple[dict[str, Any], str, float | None]:
    """Read a raw's header: return (data ID, camera name, observation time in Unix seconds).

    Raises
    ------
    calexpress.camera.CameraError
        When the file cannot be read or identified (the message names it).
    """
    from astropy.io import fits

    from ..camera import CameraError, get_camera, identify_camera

    data = storage.read_bytes(uri)
    if data[:2] == b"\x1f\x8b":
        import gzip

        data = gzip.decompress(data)
    try:
        with fits.open(_named(data, uri), memmap=False) as hdul:
            header = hdul[0].header.copy()
            for hdu in hdul[1:]:  # merge the first image extension (compressed raws)
                if hdu.is_image or isinstance(hdu, fits.CompImageHDU):
                    for card in hdu.header.cards:
                        if card.keyword not in header and card.keyword not in _STRUCTURAL:
                            header.append(card)
                    break
    except (OSError, ValueError, TypeError, EOFError) as exc:
        raise CameraError(f"{uri}: cannot read raw header: {exc}") from None
    cam = get_camera(camera) if camera is not None else identify_camera(_named(data, uri))
    name = storage.basename(uri)
    data_id = cam.metadata_to_data_id(header, filename=name)
    obs_time = None
    try:
        vi = cam.visit_info_from_header(header, filename=name)
        if vi is not None and getattr(vi, "date", None) is not None:
            obs_time = float(vi.date.utc.unix)
    except Exception as exc:  # observation time is optional in the event
        log.debug("%s: no observation time (%s)", uri, exc)
    return data_id, cam.name, obs_time


def _named(data: bytes, uri: str) -> Any:
    import io

    f = io.BytesIO(data)
    f.name = uri  # error messages name the file
    return f


def _ingest_into_repo(repo: str, camera: Any, local: list[tuple[str, dict, str]]) -> dict[str, str]:
    """Ingest local raws not yet in ``repo`` (copy + registry); return local path -> raw URI in the repo."""
    from ..butler import Butler
    from ..ingest import ingest_raws

    def butler() -> Any:
        try:
            return Butler(repo)
        except Exception:  # a new repository: ingest creates it
            return None

    b = butler()
    todo = [(u, d, i) for u, d, i in local if b is None or not b.exists("raw", d)]
    by_camera: dict[str, list[str]] = {}
    for uri, _, instrument in todo:
        by_camera.setdefault(str(camera or instrument), []).append(uri)
    for cam, files in by_camera.items():
        res = ingest_raws(repo, cam, files, mode="copy")
        if res.failed:
            raise ValueError(f"cannot ingest into {repo}: {res.failed[0]}")
    b = butler()
    return {u: b.get_uri("raw", d) for u, d, _ in local}


def prepare_raws(sources: Sequence[str], *, repo: str = "", camera: Any = None,
                 upload: bool = True) -> list[RawAnnouncement]:
    """Describe raw frames; with ``upload``, ingest those outside ``repo`` into it (copy + registry).

    Frames already in the repository's registry (same data ID) are not ingested again;
    their event points at the repository's copy.
    """
    from .service import object_checksum

    described = [(uri, *describe_raw(uri, camera)) for uri in list_raw_locations(sources)]
    targets = {uri: uri for uri, *_ in described}
    local = [(uri, did, inst) for uri, did, inst, _ in described
             if upload and repo and not uri.startswith(repo.rstrip("/") + "/")]
    if local:
        targets.update(_ingest_into_repo(repo, camera, local))
    return [RawAnnouncement(targets[uri], did, inst, obs, object_checksum(targets[uri]))
            for uri, did, inst, obs in described]


def raw_event(raw: RawAnnouncement, *, repo: str = "", collection: str = "") -> Event:
    """The ``raw`` event announcing one frame."""
    return make_event("raw", raw.data_id, {"raw": raw.uri}, stage="publish", checksums={"raw": raw.checksum},
                      observation_time=raw.observation_time, repo=repo, instrument=raw.instrument,
                      collection=collection)


async def _send(brokers: str, topic: str, payloads: Iterable[tuple[bytes | None, bytes]]) -> int:
    from aiokafka import AIOKafkaProducer

    from .kafka_security import kafka_client_kwargs

    producer = AIOKafkaProducer(bootstrap_servers=brokers, acks="all", enable_idempotence=False,
                                max_request_size=8 * 1024 * 1024, linger_ms=5, **kafka_client_kwargs())
    await producer.start()
    n = 0
    try:
        futs = [await producer.send(topic, value, key=key) for key, value in payloads]
        for f in futs:
            await f
            n += 1
    finally:
        await producer.stop()
    return n


def send_events(brokers: str, topic: str, events: Iterable[Event | bytes], keys: Iterable[bytes] | None = None
                ) -> int:
    """Send events (or raw bytes, for tests of bad messages) to ``topic``; return the count acknowledged."""
    events = list(events)
    key_list = list(keys) if keys is not None else [e.key if isinstance(e, Event) else None for e in events]
    payloads = [(k, encode_event(e) if isinstance(e, Event) else e) for k, e in zip(key_list, events)]
    return asyncio.run(_send(brokers, topic, payloads))


def announce_raws(sources: Sequence[str], *, brokers: str, topic: str, repo: str = "", camera: Any = None,
                  collection: str = "", upload: bool = True) -> list[Event]:
    """Publish one ``raw`` event per frame found in ``sources``; return the events sent."""
    from .tansu import _create_topics

    raws = prepare_raws(sources, repo=repo, camera=camera, upload=upload)
    events = [raw_event(r, repo=repo, collection=collection) for r in raws]
    try:
        asyncio.run(_create_topics(brokers, [topic], 3))
    except Exception as exc:  # topic creation is a convenience; the broker may auto-create
        log.debug("topic creation skipped: %s", exc)
    send_events(brokers, topic, events)
    for e in events:
        log.info("announced %s %s", e.data_id, e.uris["raw"])
    return events


def watch_and_announce(sources: Sequence[str], *, interval: float = 2.0, max_rounds: int | None = None,
                       **kwargs: Any) -> int:
    """Poll ``sources`` every ``interval`` s and announce frames not seen before; return the count."""
    seen: set[str] = set()
    total = 0
    rounds = 0
    while max_rounds is None or rounds < max_rounds:
        new = [u for u in list_raw_locations(sources) if u not in seen]
        if new:
            total += len(announce_raws(new, **kwargs))
            seen.update(new)
        rounds += 1
        if max_rounds is None or rounds < max_rounds:
            time.sleep(interval)
    return total


def parse_time(text: str) -> float:
    """Unix seconds from a number or an ISO-8601 time (UTC when no zone is given)."""
    try:
        return float(text)
    except ValueError:
        from astropy.time import Time

        return float(Time(text.replace("Z", ""), format="isot", scale="utc").unix)


async def _replay(brokers: str, topic: str, rerun: str, *, from_offset: int | None, from_time: float | None,
                  idle: float, include_reruns: bool, max_wait: float) -> list[Event]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    start_ms = int(time.time() * 1000)
    from .kafka_security import kafka_client_kwargs

    security = kafka_client_kwargs()
    consumer = AIOKafkaConsumer(bootstrap_servers=brokers, enable_auto_commit=False, group_id=None,
                                auto_offset_reset="earliest", **security)
    await consumer.start()
    producer = AIOKafkaProducer(bootstrap_servers=brokers, acks="all", enable_idempotence=False, linger_ms=5,
                                **security)
    await producer.start()
    sent: list[Event] = []
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            raise ValueError(f"topic {topic!r} does not exist")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        # Tansu: offsets_for_times indexes by append time (1 s resolution on s3) and answers offset 0
        # for times after the last record, so time filtering is done on each record's timestamp.
        for tp in tps:
            if from_offset is not None:
                consumer.seek(tp, from_offset)
            else:
                await consumer.seek_to_beginning(tp)
        done: set[TopicPartition] = set()
        last_data = time.monotonic()
        t_begin = time.monotonic()
        while len(done) < len(tps) and time.monotonic() - last_data < idle \
                and time.monotonic() - t_begin < max_wait:
            batch = await consumer.getmany(timeout_ms=500, max_records=500)
            for tp, msgs in batch.items():
                if tp in done:
                    continue
                for msg in msgs:
                    last_data = time.monotonic()
                    if msg.timestamp >= start_ms:  # our own replayed records or newer: stop here
                        done.add(tp)
                        break
                    if from_time is not None and msg.timestamp < from_time * 1000:
                        continue
                    try:
                        ev = decode_event(msg.value)
                    except EventError as exc:
                        log.warning("skipping %s[%d]@%d: %s", tp.topic, tp.partition, msg.offset, exc)
                        continue
                    if ev.collection and not include_reruns:
                        continue
                    new = make_event(ev.dataset_type, ev.data_id, ev.uris, stage="replay",
                                     checksums=ev.checksums, config_hash=ev.config_hash,
                                     observation_time=ev.observation_time, repo=ev.repo,
                                     instrument=ev.instrument, collection=rerun, parent=ev,
                                     trace_id=None)
                    await producer.send_and_wait(topic, encode_event(new), key=new.key)
                    sent.append(new)
    finally:
        await producer.stop()
        await consumer.stop()
    return sent


def replay_topic(brokers: str, topic: str, rerun: str, *, from_offset: int | None = None,
                 from_time: float | None = None, idle: float = 3.0, include_reruns: bool = False,
                 max_wait: float = 600.0) -> list[Event]:
    """Re-announce the events of ``topic`` into collection ``rerun``; return the events sent.

    The original events are read without a consumer group (nothing is committed) from
    ``from_offset`` on every partition, or from the beginning filtered by record
    timestamp ``>= from_time`` (Unix seconds), or from the beginning (``--all``).  Each
    is re-sent to the same topic with ``collection=rerun`` and a new event id, so the
    running services process it into ``<repo>/rerun/<rerun>`` and the live
    collection is untouched.  Reading stops at records newer than the replay start
    (its own output) or after ``idle`` seconds without records (``end_offsets`` is
    unreliable on Tansu's s3 storage).  Events already carrying a collection are
    skipped unless ``include_reruns``.
    """
    if not rerun:
        raise ValueError("replay needs a rerun (collection) name")
    return asyncio.run(_replay(brokers, topic, rerun, from_offset=from_offset, from_time=from_time, idle=idle,
                               include_reruns=include_reruns, max_wait=max_wait))


__all__ += ["parse_time", "prepare_raws", "raw_event", "watch_and_announce"]
