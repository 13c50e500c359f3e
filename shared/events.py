"""Streaming events: the msgpack messages that connect the calexpress services.

An event announces that a dataset exists in object storage.  It carries references
(URIs, checksums), never pixels.  The schema is documented in ``docs/events.md``.

Decoding is strict: an unknown ``schema_version``, a missing or mistyped field,
an unknown field or bytes that are not msgpack raise `EventError` with a one-line
reason, so a service can send the message to its dead-letter topic instead of
guessing.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

__all__ = [
    "QUALITY_KEYS",
    "SCHEMA_VERSION",
    "Event",
    "EventError",
    "decode_event",
    "deterministic_event_id",
    "encode_event",
    "event_key",
    "make_event",
    "new_trace_id",
]

#: The only schema version this code reads and writes.
SCHEMA_VERSION = 1

#: Keys of the per-CCD quality summary carried by the final (``calexp``) event.
QUALITY_KEYS = ("psf_fwhm_arcsec", "zero_point", "astrometric_rms_mas", "limiting_mag")

# Namespace for deterministic event ids (uuid5).
_EVENT_NAMESPACE = uuid.UUID("6f1c1d2e-8b0e-5c3a-9a44-2a7c0e1f5d10")


class EventError(ValueError):
    """A message that is not a valid calexpress event (malformed or unknown schema)."""


def _is_scalar_id(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Event:
    """One streaming event.

    Attributes
    ----------
    event_id : `str`
        Identifier of the announcement.  Deterministic for a given output
        (collection, dataset type, data ID, config hash), so a re-announcement
        of the same outputs carries the same id and consumers can de-duplicate.
    dataset_type : `str`
        Dataset the event announces (``raw``, ``postISRCCD``, ``icExp``, ``calexp``).
    data_id : `dict`
        Data ID (e.g. ``{"visit": 1, "ccd": 0, "filter": "g"}``); values int or str.
    uris : `dict` [`str`, `str`]
        Object URIs by dataset type (``{"calexp": "s3://...", "src": "s3://..."}``).
    checksums : `dict` [`str`, `str`]
        ETag or ``sha256:<hex>`` of each object in ``uris``.
    stage : `str`
        Producing stage (``publish``, ``isr``, ``characterize``, ``calibrate``, ``replay``).
    software_version : `str`
        ``calexpress.__version__`` of the producer.
    config_hash : `str`
        `calexpress.config.config_hash` of the producing task's config ("" for raw).
    trace_id : `str`
        Follows one CCD through all stages (set at publish time, then copied).
    attempt : `int`
        1 for the first processing attempt; incremented on retries.
    observation_time : `float` or `None`
        Mid-exposure (or shutter-close) time, Unix seconds UTC, when known.
    announce_time : `float`
        When the raw frame was announced (Unix seconds); copied downstream, used
        for end-to-end latency.
    created_at : `float`
        When this event was created (Unix seconds).
    collection : `str`
        Output collection (rerun) the CCD is processed into; "" means the
        service's default collection.
    repo : `str`
        Root URI of the data repository ("" when not applicable).
    instrument : `str`
        Camera name (e.g. ``simcamA``).
    quality : `dict` or `None`
        Per-CCD quality summary (`QUALITY_KEYS`); set on the final event only.
    parent_event_id : `str`
        The event this one was produced from ("" for raw).
    """

    event_id: str
    dataset_type: str
    data_id: dict[str, int | str]
    uris: dict[str, str]
    checksums: dict[str, str]
    stage: str
    software_version: str
    config_hash: str
    trace_id: str
    attempt: int
    observation_time: float | None
    announce_time: float
    created_at: float
    collection: str = ""
    repo: str = ""
    instrument: str = ""
    quality: dict[str, float | None] | None = None
    parent_event_id: str = ""
    schema_version: int = SCHEMA_VERSION

    def replace(self, **changes: Any) -> Event:
        """Return a copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Return the event as a plain dict (the msgpack map)."""
        return dataclasses.asdict(self)

    @property
    def key(self) -> bytes:
        """The Kafka key that keeps this CCD on one partition (see `event_key`)."""
        return event_key(self.data_id, self.instrument)


# field name -> (accepted types, may be None)
_FIELD_TYPES: dict[str, tuple[tuple[type, ...], bool]] = {
    "schema_version": ((int,), False),
    "event_id": ((str,), False),
    "dataset_type": ((str,), False),
    "data_id": ((dict,), False),
    "uris": ((dict,), False),
    "checksums": ((dict,), False),
    "stage": ((str,), False),
    "software_version": ((str,), False),
    "config_hash": ((str,), False),
    "trace_id": ((str,), False),
    "attempt": ((int,), False),
    "observation_time": ((int, float), True),
    "announce_time": ((int, float), False),
    "created_at": ((int, float), False),
    "collection": ((str,), False),
    "repo": ((str,), False),
    "instrument": ((str,), False),
    "quality": ((dict,), True),
    "parent_event_id": ((str,), False),
}
_REQUIRED = {f.name for f in dataclasses.fields(Event) if f.default is dataclasses.MISSING}


def _validate(obj: Mapping[str, Any]) -> None:
    unknown = set(obj) - set(_FIELD_TYPES)
    if unknown:
        raise EventError(f"unknown event field(s): {', '.join(sorted(unknown))}")
    missing = _REQUIRED - set(obj)
    if missing:
        raise EventError(f"missing event field(s): {', '.join(sorted(missing))}")
    for name, value in obj.items():
        types, nullable = _FIELD_TYPES[name]
        if value is None and nullable:
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            raise EventError(f"event field {name!r} has type {type(value).__name__}")
    if not obj["event_id"]:
        raise EventError("event field 'event_id' is empty")
    if not obj["dataset_type"]:
        raise EventError("event field 'dataset_type' is empty")
    if obj["attempt"] < 1:
        raise EventError(f"event field 'attempt' must be >= 1, got {obj['attempt']}")
    for k, v in obj["data_id"].items():
        if not isinstance(k, str) or not _is_scalar_id(v):
            raise EventError(f"data_id entry {k!r}: {v!r} is not str -> int|str")
    for name in ("uris", "checksums"):
        for k, v in obj[name].items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise EventError(f"{name} entry {k!r} is not str -> str")
    if obj.get("quality") is not None:
        for k, v in obj["quality"].items():
            if not isinstance(k, str) or not (v is None or isinstance(v, (int, float))):
                raise EventError(f"quality entry {k!r} is not str -> float|None")


def encode_event(event: Event) -> bytes:
    """Serialize an event to msgpack bytes (validated first).

    Raises
    ------
    EventError
        If the event does not satisfy the schema.
    """
    obj = event.to_dict()
    _validate(obj)
    return msgpack.packb(obj, use_bin_type=True)


def decode_event(data: bytes | None) -> Event:
    """Decode and validate msgpack bytes into an `Event`.

    Raises
    ------
    EventError
        On malformed msgpack, a non-map message, an unknown ``schema_version``,
        or missing, unknown or mistyped fields.  The message says which.
    """
    if not data:
        raise EventError("empty message")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise EventError(f"malformed msgpack: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, dict):
        raise EventError(f"event is a msgpack {type(obj).__name__}, not a map")
    version = obj.get("schema_version")
    if version != SCHEMA_VERSION:
        raise EventError(f"unknown schema_version {version!r} (this software reads {SCHEMA_VERSION})")
    _validate(obj)
    return Event(**obj)


def event_key(data_id: Mapping[str, Any], instrument: str = "") -> bytes:
    """Return the partitioning key of a CCD.

    The key is built from the instrument and the data ID items except ``filter``
    (which does not identify a CCD), sorted by name, so every event about one
    CCD lands on the same partition whatever the stage.

    Examples
    --------
    >>> event_key({"visit": 3, "ccd": 1, "filter": "g"}, "simcamA")
    b'simcamA/ccd=1/visit=3'
    """
    items = [f"{k}={data_id[k]}" for k in sorted(data_id) if k != "filter"]
    return "/".join([instrument, *items]).encode()


def new_trace_id() -> str:
    """Return a fresh random trace id (32 hex digits)."""
    return uuid.uuid4().hex


def deterministic_event_id(
    collection: str, dataset_type: str, data_id: Mapping[str, Any], config_hash: str, instrument: str = ""
) -> str:
    """Return the event id of an output: same outputs, same id."""
    name = "|".join([collection, dataset_type, event_key(data_id, instrument).decode(), config_hash])
    return str(uuid.uuid5(_EVENT_NAMESPACE, name))


def make_event(
    dataset_type: str,
    data_id: Mapping[str, Any],
    uris: Mapping[str, str],
    *,
    stage: str,
    checksums: Mapping[str, str] | None = None,
    config_hash: str = "",
    trace_id: str | None = None,
    attempt: int = 1,
    observation_time: float | None = None,
    announce_time: float | None = None,
    collection: str = "",
    repo: str = "",
    instrument: str = "",
    quality: Mapping[str, float | None] | None = None,
    parent: Event | None = None,
    event_id: str | None = None,
) -> Event:
    """Build an event, filling ids, times and the software version.

    With ``parent`` given, the trace id, observation and announce times,
    collection, repo and instrument are inherited unless given explicitly.
    """
    from . import __version__

    now = time.time()
    if parent is not None:
        trace_id = trace_id or parent.trace_id
        observation_time = observation_time if observation_time is not None else parent.observation_time
        announce_time = announce_time if announce_time is not None else parent.announce_time
        collection = collection or parent.collection
        repo = repo or parent.repo
        instrument = instrument or parent.instrument
    event = Event(
        event_id=event_id or str(uuid.uuid4()),
        dataset_type=dataset_type,
        data_id={str(k): (v.item() if hasattr(v, "item") else v) for k, v in data_id.items()},
        uris=dict(uris),
        checksums=dict(checksums or {}),
        stage=stage,
        software_version=__version__,
        config_hash=config_hash,
        trace_id=trace_id or new_trace_id(),
        attempt=int(attempt),
        observation_time=None if observation_time is None else float(observation_time),
        announce_time=float(announce_time if announce_time is not None else now),
        created_at=now,
        collection=collection,
        repo=repo,
        instrument=instrument,
        quality=None if quality is None else {k: None if v is None else float(v) for k, v in quality.items()},
        parent_event_id=parent.event_id if parent is not None else "",
    )
    _validate(event.to_dict())
    return event

