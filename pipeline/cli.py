"""The ``calexpress`` command and its subcommands.

Each part of calexpress that has a command line exposes ``register_cli(subparsers)``,
which adds its subcommands with ``set_defaults(func=callable(args) -> int)``:

===================  ===========================================
subcommand           provided by
===================  ===========================================
``ingest``           `calexpress.ingest` (raws into a repository)
``ingest-calibs``    `calexpress.ingest` (master calibrations)
``make-calibs``      `calexpress.isr.makecalibs`
``refcat``           `calexpress.calibrate.refcat_ingest`
``serve`` ...        `calexpress.streaming.cli` (serve, publish, replay, stack)
``process-ccd``      `calexpress.pipeline.cmdline` (same as ``processCcd.py``)
===================  ===========================================
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from calexpress import __version__

__all__ = ["build_parser", "main"]

#: Modules whose ``register_cli`` adds subcommands, in help order.
CLI_MODULES = (
    "calexpress.ingest",
    "calexpress.isr.makecalibs",
    "calexpress.calibrate.refcat_ingest",
    "calexpress.streaming.cli",
)


def _process_ccd(args: argparse.Namespace) -> int:
    from calexpress.pipeline.cmdline import run_command

    return run_command(args.rest)


def build_parser() -> argparse.ArgumentParser:
    """Return the ``calexpress`` argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="calexpress",
        description="calexpress: raw CCD frames to calibrated exposures and source catalogs.",
    )
    parser.add_argument("--version", action="version", version=f"calexpress {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in CLI_MODULES:
        importlib.import_module(name).register_cli(sub)
    pcd = sub.add_parser("process-ccd", help="run processCcd.py (same arguments)", add_help=False)
    pcd.add_argument("rest", nargs=argparse.REMAINDER)
    pcd.set_defaults(func=_process_ccd)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point of ``calexpress``."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(name)s %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        status = args.func(args)
    except KeyboardInterrupt:
        status = 130
    sys.exit(int(status or 0))


if __name__ == "__main__":  # pragma: no cover
    main()
