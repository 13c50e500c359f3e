"""Command lines of the streaming layer: ``serve``, ``publish``, ``replay``, ``stack``.

`register_cli` adds them to the ``calexpress`` command.  Every option has an
environment variable (``CALEXPRESS_*``); S3 secrets are read from the
environment or a flag and are never logged.  The stage code is imported only
when ``serve`` runs (``importlib`` on ``calexpress.<stage>.service``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

__all__ = ["apply_log_level", "main", "register_cli", "settings_from_args"]

log = logging.getLogger(__name__)


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--brokers", default=_env("CALEXPRESS_BROKERS", "127.0.0.1:9092"),
                   help="Kafka bootstrap servers (env CALEXPRESS_BROKERS; default %(default)s)")
    p.add_argument("--topic-prefix", default=_env("CALEXPRESS_TOPIC_PREFIX", "calexpress."),
                   help="prefix of the topic names (env CALEXPRESS_TOPIC_PREFIX; default %(default)s)")
    p.add_argument("--s3-endpoint", default=_env("CALEXPRESS_S3_ENDPOINT") or _env("AWS_ENDPOINT_URL"),
                   help="S3 endpoint URL (env CALEXPRESS_S3_ENDPOINT or AWS_ENDPOINT_URL)")
    p.add_argument("--s3-key", default=_env("CALEXPRESS_S3_KEY") or _env("AWS_ACCESS_KEY_ID"),
                   help="S3 access key (env CALEXPRESS_S3_KEY or AWS_ACCESS_KEY_ID)")
    p.add_argument("--s3-secret", default=None,
                   help="S3 secret key; prefer env CALEXPRESS_S3_SECRET or AWS_SECRET_ACCESS_KEY")
    p.add_argument("--repo", default=_env("CALEXPRESS_REPO", ""),
                   help="data repository root, e.g. s3://bucket/repo (env CALEXPRESS_REPO)")


def _secret(args: argparse.Namespace) -> str | None:
    return args.s3_secret or _env("CALEXPRESS_S3_SECRET") or _env("AWS_SECRET_ACCESS_KEY")


def _apply_s3_env(args: argparse.Namespace) -> None:
    if args.s3_endpoint:
        os.environ["CALEXPRESS_S3_ENDPOINT"] = args.s3_endpoint
    secret = _secret(args)
    if args.s3_key and secret:
        os.environ["CALEXPRESS_S3_KEY"] = args.s3_key
        os.environ["CALEXPRESS_S3_SECRET"] = secret


def settings_from_args(args: argparse.Namespace):
    """Build `ServiceSettings` from parsed ``serve`` arguments."""
    from .service import ServiceSettings

    return ServiceSettings(
        stage=args.stage, brokers=args.brokers, repo=args.repo, collection=args.collection,
        topic_prefix=args.topic_prefix, input_topic=args.input_topic, output_topic=args.output_topic,
        group_id=args.group_id, s3_endpoint=args.s3_endpoint, s3_key=args.s3_key, s3_secret=_secret(args),
        metrics_host=args.metrics_host, metrics_port=args.metrics_port, max_attempts=args.max_attempts,
        shutdown_grace=args.shutdown_grace, partitions=args.partitions, config_file=args.config_file,
        processor=args.processor, session_timeout_ms=args.session_timeout_ms,
        backoff_initial=args.backoff_initial, log_level=args.log_level, threads=args.threads,
        fetch_max_wait_ms=args.fetch_max_wait_ms,
        kafka_security_protocol=_env("CALEXPRESS_KAFKA_SECURITY_PROTOCOL") or "PLAINTEXT",
        kafka_sasl_mechanism=_env("CALEXPRESS_KAFKA_SASL_MECHANISM") or "PLAIN",
        kafka_username=_env("CALEXPRESS_KAFKA_USERNAME") or None,
        kafka_password=_env("CALEXPRESS_KAFKA_PASSWORD") or None,
        kafka_ssl_cafile=_env("CALEXPRESS_KAFKA_SSL_CAFILE") or None)


def apply_log_level(level: str | None) -> None:
    """Set the root logger's level from a name (``DEBUG``, ``INFO``, ...; env ``CALEXPRESS_LOG_LEVEL``)."""
    if not level:
        return
    value = logging.getLevelName(str(level).upper())
    if not isinstance(value, int):
        raise SystemExit(f"calexpress serve: unknown log level {level!r} (use DEBUG, INFO, WARNING, ERROR)")
    logging.getLogger().setLevel(value)


def _serve(args: argparse.Namespace) -> int:
    from .service import run_service

    settings = settings_from_args(args)
    apply_log_level(settings.log_level)
    log.info("serve %s: %s", args.stage, settings)  # repr excludes the secrets
    run_service(settings, max_events=args.max_events)
    return 0


def _publish(args: argparse.Namespace) -> int:
    from .announce import announce_raws, watch_and_announce

    _apply_s3_env(args)
    topic = args.topic or f"{args.topic_prefix}raw"
    kwargs = dict(brokers=args.brokers, topic=topic, repo=args.repo, camera=args.camera,
                  collection=args.collection or "", upload=not args.no_upload)
    if args.watch:
        watch_and_announce(args.sources, interval=args.interval, **kwargs)
        return 0
    events = announce_raws(args.sources, **kwargs)
    print(json.dumps({"announced": len(events), "topic": topic,
                      "data_ids": [e.data_id for e in events]}))
    return 0 if events else 1


def _replay(args: argparse.Namespace) -> int:
    from .announce import parse_time, replay_topic

    topic = args.topic if "." in args.topic else f"{args.topic_prefix}{args.topic}"
    events = replay_topic(args.brokers, topic, args.rerun,
                          from_offset=args.from_offset,
                          from_time=parse_time(args.from_time) if args.from_time else None,
                          idle=args.idle, include_reruns=args.include_reruns)
    print(json.dumps({"replayed": len(events), "topic": topic, "rerun": args.rerun}))
    return 0


def _stack(args: argparse.Namespace) -> int:
    from . import stack

    if args.action == "up":
        info = stack.stack_up(args.dir, storage=args.storage, camera_repo=args.repo or None,
                              metrics_base_port=args.metrics_base_port, partitions=args.partitions)
        print(json.dumps({k: v for k, v in info.items() if k != "s3_secret"}, indent=1))
    elif args.action == "down":
        stack.stack_down(args.dir)
    else:
        print(json.dumps(stack.stack_status(args.dir), indent=1))
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``serve``, ``publish``, ``replay`` and ``stack`` to the ``calexpress`` command."""
    p = subparsers.add_parser("serve", help="run a streaming stage service (isr, characterize, calibrate)")
    p.add_argument("stage", choices=["isr", "characterize", "calibrate"], help="stage to run")
    _add_common(p)
    p.add_argument("--collection", default=_env("CALEXPRESS_COLLECTION", "live"),
                   help="default output collection (rerun) (env CALEXPRESS_COLLECTION; default %(default)s)")
    p.add_argument("--group-id", default=_env("CALEXPRESS_GROUP_ID"),
                   help="consumer group (env CALEXPRESS_GROUP_ID; default <topic prefix><stage>)")
    p.add_argument("--input-topic", default=None, help="override the input topic name")
    p.add_argument("--output-topic", default=None, help="override the output topic name")
    p.add_argument("--metrics-host", default=_env("CALEXPRESS_METRICS_HOST", "127.0.0.1"),
                   help="bind address of /metrics (env CALEXPRESS_METRICS_HOST; default %(default)s)")
    p.add_argument("--metrics-port", type=int, default=int(_env("CALEXPRESS_METRICS_PORT", "9102")),
                   help="port of /metrics, /healthz, /readyz; 0 = free port, -1 = off (default %(default)s)")
    p.add_argument("--config-file", default=_env("CALEXPRESS_CONFIG_FILE"),
                   help="pex_config override file for the stage task")
    p.add_argument("--max-attempts", type=int, default=4, help="attempts for transient errors")
    p.add_argument("--backoff-initial", type=float, default=0.5, help="first retry delay, seconds")
    p.add_argument("--shutdown-grace", type=float, default=float(_env("CALEXPRESS_SHUTDOWN_GRACE", "30")),
                   help="seconds to finish the current CCD after SIGTERM (default %(default)s)")
    p.add_argument("--session-timeout-ms", type=int, default=6000, help="Kafka session timeout")
    p.add_argument("--partitions", type=int, default=3, help="partitions of topics created by the service")
    p.add_argument("--max-events", type=int, default=None, help="stop after this many events (testing)")
    p.add_argument("--threads", type=int, default=int(_env("CALEXPRESS_THREADS", "1")),
                   help="BLAS/OpenMP threads of the stage code; 0 = one per core (env CALEXPRESS_THREADS; "
                        "default %(default)s: the services of a node share its cores)")
    p.add_argument("--fetch-max-wait-ms", type=int, default=50,
                   help="longest broker wait of an empty fetch, ms (default %(default)s)")
    p.add_argument("--log-level", default=_env("CALEXPRESS_LOG_LEVEL", "INFO"),
                   help="log level (env CALEXPRESS_LOG_LEVEL; default %(default)s). Kafka TLS/SASL: env "
                        "CALEXPRESS_KAFKA_SECURITY_PROTOCOL, _SASL_MECHANISM, _USERNAME, _PASSWORD")
    p.add_argument("--processor", default=_env("CALEXPRESS_PROCESSOR"),
                   help="module:factory of a custom StageProcessor instead of the built-in stage")
    p.set_defaults(func=_serve)

    p = subparsers.add_parser("publish", help="announce raw frames (files, folders, globs, s3:// prefixes)")
    p.add_argument("sources", nargs="+", help="raw files, folders, globs or s3:// prefixes")
    _add_common(p)
    p.add_argument("--topic", default=None, help="raw topic (default <prefix>raw)")
    p.add_argument("--camera", default=None, help="camera name or YAML (default: identify from the header)")
    p.add_argument("--collection", default=None, help="collection for these frames (default: the services')")
    p.add_argument("--no-upload", action="store_true", help="announce local paths as they are")
    p.add_argument("--watch", action="store_true", help="keep polling the sources for new frames")
    p.add_argument("--interval", type=float, default=2.0, help="watch polling interval, seconds")
    p.set_defaults(func=_publish)

    p = subparsers.add_parser("replay", help="reprocess a topic's events into a new collection (rerun)")
    _add_common(p)
    p.add_argument("--topic", default="raw", help="topic to replay (name or full name; default raw)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--from-offset", type=int, help="replay from this offset of every partition")
    g.add_argument("--from-time", help="replay records at/after this time (ISO-8601 UTC or Unix seconds)")
    g.add_argument("--all", action="store_true", help="replay the whole topic")
    p.add_argument("--rerun", required=True, help="output collection of the reprocessing")
    p.add_argument("--idle", type=float, default=3.0, help="stop after this many seconds without records")
    p.add_argument("--include-reruns", action="store_true", help="also replay events of other reruns")
    p.set_defaults(func=_replay)

    p = subparsers.add_parser("stack", help="start/stop a local Tansu + SeaweedFS + services stack")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--dir", default=_env("CALEXPRESS_STACK_DIR", ".calexpress-stack"),
                   help="state folder (pid files, logs, data)")
    p.add_argument("--storage", choices=["memory", "s3"], default="s3",
                   help="Tansu storage: memory, or s3 on the stack's SeaweedFS (durable; default)")
    p.add_argument("--repo", default=None, help="data repository (default s3://calexpress/repo)")
    p.add_argument("--metrics-base-port", type=int, default=9102,
                   help="metrics port of isr; characterize and calibrate use the next two (0 = free ports)")
    p.add_argument("--partitions", type=int, default=3)
    p.set_defaults(func=_stack)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the streaming subcommands alone (``python -m calexpress.streaming.cli``)."""
    parser = argparse.ArgumentParser(prog="calexpress")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    register_cli(sub)
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s", stream=sys.stderr)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    sys.exit(int(args.func(args) or 0))


if __name__ == "__main__":  # pragma: no cover
    main()
