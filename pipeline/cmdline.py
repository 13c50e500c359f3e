"""``processCcd.py``: LSST's Gen2 command line for `ProcessCcdTask`.

Usage follows ``lsst.pipe.base.ArgumentParser`` (release 21.0.0)::

    processCcd.py REPOPATH [--calib CALIB] (--output OUT | --rerun [IN:]OUT) [--id KEY=VALUE ...]
                  [-c NAME=VALUE ...] [-C FILE ...] [--show config[=GLOB]|data|tasks|run ...]
                  [-j N] [--clobber-config] [--clobber-output] [--doraise] [-L LEVEL ...]
                  [--longlog] [--profile FILE] [@argfile]

The exit status is the number of data IDs that failed.
"""

from __future__ import annotations

import argparse
import contextvars
import fnmatch
import logging
import multiprocessing
import os
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any

from calexpress.config import apply_overrides
from calexpress.dataids import DataIdSyntaxError, cast_data_id, expand_id_tokens, format_data_id

__all__ = ["ProcessCcdArgumentParser", "main", "run_command"]

log = logging.getLogger("calexpress.processCcd.cmdline")

_current_data_id: contextvars.ContextVar[str] = contextvars.ContextVar("data_id", default="")

LOG_LEVELS = {
    "TRACE": 5,
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARN": logging.WARNING,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "FATAL": logging.CRITICAL,
}

SHORT_FORMAT = "%(shortname)s %(levelname)s: %(message)s"
LONG_FORMAT = "%(levelname)-5s %(asctime)s %(shortname)s (%(data_id)s)(%(filename)s:%(lineno)d)- %(message)s"


class UsageError(Exception):
    """A command-line error reported as one line, exit status 2."""


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.data_id = _current_data_id.get()
        name = record.name
        record.shortname = name[len("calexpress."):] if name.startswith("calexpress.") else name
        return True


class _ArgumentParser(argparse.ArgumentParser):
    """argparse with LSST's ``@file`` syntax (``#`` comments, several arguments per line)."""

    def convert_arg_line_to_args(self, arg_line: str) -> list[str]:
        line = arg_line.split("#", 1)[0].strip()
        return line.split() if line else []

    def error(self, message: str) -> None:  # one line, exit status 2
        raise UsageError(message)


class ProcessCcdArgumentParser:
    """Build and interpret the ``processCcd.py`` arguments."""

    def __init__(self, name: str = "processCcd.py") -> None:
        p = _ArgumentParser(
            prog=name,
            fromfile_prefix_chars="@",
            description="Process raw CCD exposures into calibrated exposures (calexp) and source "
            "catalogs (src): ISR, image characterization and calibration.",
            epilog="Data IDs: --id key=v1^v2 (alternatives), a..b and a..b:stride (integer ranges); "
            "keys combine as a cross product; a bare --id selects everything. "
            "The exit status is the number of failed data IDs.",
        )
        p.add_argument("input", help="path to input data repository, relative to $PIPE_INPUT_ROOT")
        p.add_argument("--calib", help="path to input calibration repository, relative to $PIPE_CALIB_ROOT")
        p.add_argument("--output", help="path to output data repository (need not exist), relative to "
                       "$PIPE_OUTPUT_ROOT; may be s3://bucket/prefix")
        p.add_argument("--rerun", metavar="[INPUT:]OUTPUT",
                       help="rerun name: sets OUTPUT to ROOT/rerun/OUTPUT; optionally sets ROOT to "
                       "ROOT/rerun/INPUT")
        p.add_argument("-c", "--config", nargs="*", action="append", default=[], metavar="NAME=VALUE",
                       help="config override(s), e.g. -c isr.doBias=False calibrate.doAstrometry=False")
        p.add_argument("-C", "--configfile", nargs="*", action="append", default=[], metavar="CONFIGFILE",
                       help="config override file(s)")
        p.add_argument("--id", nargs="*", action="append", dest="id", metavar="KEY=VALUE1[^VALUE2...]",
                       help="data ID, e.g. --id visit=12345 ccd=1,2; may be repeated")
        p.add_argument("-L", "--loglevel", nargs="+", action="append", default=[],
                       metavar="LEVEL|COMPONENT=LEVEL",
                       help="logging level: trace, debug, info, warn, error, fatal (case-insensitive)")
        p.add_argument("--longlog", action="store_true", help="use a more verbose format for the log")
        p.add_argument("--debug", action="store_true", help="enable debugging output (import debug.py)")
        p.add_argument("--doraise", action="store_true",
                       help="raise an exception on error (else log a message and continue)")
        p.add_argument("--noExit", action="store_true", help="do not exit, even upon failure")
        p.add_argument("--profile", help="dump cProfile statistics to this file")
        p.add_argument("--show", nargs="+", default=(), metavar="ITEM",
                       help="display the specified information to stdout and quit (unless run is "
                       "specified): config[=PATTERN] | history=PATTERN | tasks | data | run")
        p.add_argument("-j", "--processes", type=int, default=1, help="number of processes to use")
        p.add_argument("-t", "--timeout", type=float, default=2_592_000.0,
                       help="timeout for multiprocessing; maximum wall time (sec)")
        p.add_argument("--clobber-output", action="store_true",
                       help="remove and re-create the output directory if it already exists")
        p.add_argument("--clobber-config", action="store_true",
                       help="back up and then overwrite existing config files instead of checking them")
        p.add_argument("--no-backup-config", action="store_true",
                       help="don't copy config to file~N backup")
        p.add_argument("--clobber-versions", action="store_true",
                       help="backup and then overwrite existing package versions instead of checking them")
        p.add_argument("--no-versions", action="store_true", help="don't check package versions")
        self.parser = p

    def parse_args(self, argv: Sequence[str]) -> argparse.Namespace:
        """Parse ``argv`` (without the program name)."""
        args = self.parser.parse_args(list(argv))
        args.config = [item for group in args.config for item in group]
        args.configfile = [item for group in args.configfile for item in group]
        args.loglevel = [item for group in args.loglevel for item in group]
        if args.processes < 1:
            raise UsageError(f"-j/--processes must be >= 1, not {args.processes}")
        if args.output and args.rerun:
            raise UsageError("--output and --rerun are mutually exclusive")
        root = os.environ.get("PIPE_INPUT_ROOT")
        if root and "://" not in args.input:
            args.input = os.path.join(root, args.input)
        if args.calib and os.environ.get("PIPE_CALIB_ROOT") and "://" not in args.calib:
            args.calib = os.path.join(os.environ["PIPE_CALIB_ROOT"], args.calib)
        if args.output and os.environ.get("PIPE_OUTPUT_ROOT") and "://" not in args.output:
            args.output = os.path.join(os.environ["PIPE_OUTPUT_ROOT"], args.output)
        if args.rerun:
            inp, _, out = args.rerun.rpartition(":")
            base = args.input.rstrip("/")
            args.output = f"{base}/rerun/{out}"
            if inp:
                args.input = f"{base}/rerun/{inp}"
        if not args.output:
            raise UsageError("no output directory specified (use --output or --rerun)")
        if "://" not in args.input and not os.path.isdir(args.input):
            raise UsageError(f"input repository {args.input!r} does not exist")
        return args


def _setup_logging(levels: Sequence[str], longlog: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    handler.setFormatter(logging.Formatter(LONG_FORMAT if longlog else SHORT_FORMAT))
    root = logging.getLogger("calexpress")
    root.handlers[:] = [handler]
    root.propagate = False
    root.setLevel(logging.INFO)
    for item in levels:
        component, _, level = item.rpartition("=")
        if level.upper() not in LOG_LEVELS:
            raise UsageError(f"unknown log level {level!r}; use one of {', '.join(LOG_LEVELS).lower()}")
        if component:
            name = component if component.startswith("calexpress") else f"calexpress.{component}"
            logging.getLogger(name).setLevel(LOG_LEVELS[level.upper()])
        else:
            root.setLevel(LOG_LEVELS[level.upper()])
            logging.getLogger().setLevel(LOG_LEVELS[level.upper()])


def _apply_overrides(config: Any, items: Sequence[str]) -> None:
    """Apply ``-c name=value`` overrides: a string set first, then ``eval(value)`` (as LSST)."""
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"-c/--config argument {item!r} is not of the form name=value")
        *path, field = name.strip().split(".")
        target = config
        try:
            for part in path:
                target = getattr(target, part)
            if not hasattr(target, field):
                raise AttributeError(field)
        except AttributeError:
            raise UsageError(f"unknown config field {name!r}") from None
        try:
            setattr(target, field, value)
        except Exception:
            try:
                setattr(target, field, eval(value, {}))  # noqa: S307 - LSST semantics
            except Exception as exc:
                raise UsageError(f"cannot set config field {name}={value!r}: {exc}") from None


def apply_camera_overrides(config: Any, camera: Any) -> None:
    """Apply a camera's config overrides (its YAML's ``config_overrides`` and ``*_overrides`` blocks).

    ``config_overrides`` maps dotted field names (``isr.doBias``) to values;
    ``isr_overrides``, ``charImage_overrides`` and ``calibrate_overrides`` map
    field names inside those sub-configs.
    """
    config_overrides = getattr(camera, "config_overrides", None) or {}
    apply_overrides(config, [(k, v) for k, v in config_overrides.items()
                             if k.split(".", 1)[0] not in ("isr", "charImage", "calibrate")])
    for stage in ("isr", "charImage", "calibrate"):
        apply_overrides(getattr(config, stage), camera.stage_overrides(stage))


def build_config(args: argparse.Namespace, camera: Any) -> Any:
    """Defaults, then camera overrides, then ``-c``/``-C`` in command-line order; validated."""
    from calexpress.pipeline.processCcd import ProcessCcdConfig

    config = ProcessCcdConfig()
    apply_camera_overrides(config, camera)
    for path in args.configfile:
        if not os.path.exists(path):
            raise UsageError(f"config file {path!r} does not exist")
        try:
            config.load(path)
        except Exception as exc:
            raise UsageError(f"cannot load config file {path}: {exc}") from None
    _apply_overrides(config, args.config)
    try:
        config.validate()
    except Exception as exc:
        raise UsageError(f"invalid config: {exc}") from None
    return config


def resolve_data_ids(butler: Any, id_groups: Sequence[Sequence[str]] | None) -> tuple[list[dict], list[str]]:
    """Expand the ``--id`` groups into full data IDs of raws present in the repository.

    Returns
    -------
    data_ids : `list` of `dict`
        Unique full data IDs, in command-line order.
    unmatched : `list` of `str`
        One message per ``--id`` argument that matched nothing.
    """
    key_types = dict(butler.camera.data_id_keys)
    data_ids: list[dict] = []
    seen: set[tuple] = set()
    unmatched: list[str] = []
    for tokens in id_groups or []:
        try:
            partials = [cast_data_id(p, key_types) for p in expand_id_tokens(tokens)]
        except KeyError as exc:
            raise UsageError(str(exc.args[0])) from None
        except DataIdSyntaxError as exc:
            raise UsageError(str(exc)) from None
        found = 0
        for partial in partials:
            matches = butler.query_data_ids("raw", **partial)
            if not matches:
                log.warning("No data found for dataId=%s", format_data_id(partial))
            for full in matches:
                found += 1
                key = tuple(sorted(full.items()))
                if key not in seen:
                    seen.add(key)
                    data_ids.append(dict(full))
        if not found:
            unmatched.append(f"No data found for --id {' '.join(tokens) or '(all)'}")
    return data_ids, unmatched


def _config_text(config: Any) -> str:
    return config.saveToString()


def _check_or_write_config(butler: Any, config: Any, args: argparse.Namespace) -> None:
    """Store the config in the output repository, refusing a different one unless --clobber-config."""
    from calexpress.config import compareConfigs
    from calexpress.pipeline.processCcd import ProcessCcdConfig

    text = _config_text(config)
    if butler.exists("processCcd_config", {}):
        stored_text = butler.get("processCcd_config", {})
        stored = ProcessCcdConfig()
        try:
            stored.loadFromString(stored_text)
            same = compareConfigs("processCcd", stored, config, shortcut=True)
        except Exception:
            same = False
        if not same:
            if not args.clobber_config:
                raise UsageError(
                    "the config of this run differs from the one stored in the output repository "
                    f"({butler.get_uri('processCcd_config', {})}); use --clobber-config to overwrite it "
                    "or choose another output"
                )
            if not args.no_backup_config:
                n = 1
                while butler.exists("processCcd_config", {}, backup=n):
                    n += 1
                butler.put(stored_text, "processCcd_config", {}, backup=n)
            butler.put(text, "processCcd_config", {})
    else:
        butler.put(text, "processCcd_config", {})


def _make_butler(args: argparse.Namespace) -> Any:
    from calexpress.butler import Butler

    if args.clobber_output:
        from calexpress import storage

        if storage.exists(args.output):
            log.info("Removing output repository %s (--clobber-output)", args.output)
            storage.remove_tree(args.output)
    return Butler(args.output, parents=[args.input], calib_root=args.calib)


def _show(args: argparse.Namespace, config: Any, butler: Any, data_ids: list[dict]) -> bool:
    """Handle --show; return True if processing should go on (``run`` given or nothing shown)."""
    go_on = True
    for item in args.show:
        what, _, pattern = item.partition("=")
        if what == "config":
            go_on = "run" in args.show
            text = _config_text(config)
            if pattern:
                ignore_case = not pattern.endswith(":NOIGNORECASE")
                pattern = pattern.removesuffix(":NOIGNORECASE")
                for line in text.splitlines():
                    if not line.startswith("config."):
                        continue
                    name = line.split("=", 1)[0][len("config."):]
                    hit = (fnmatch.fnmatch(name.lower(), pattern.lower()) if ignore_case
                           else fnmatch.fnmatchcase(name, pattern))
                    if hit:
                        print(line)
            else:
                print(text)
        elif what == "data":
            go_on = "run" in args.show
            for data_id in data_ids:
                print(f"id dataRef.dataId = {data_id}")
        elif what == "tasks":
            go_on = "run" in args.show
            from calexpress.pipeline.processCcd import ProcessCcdTask

            task = ProcessCcdTask(config=config, butler=butler)
            print("Subtasks:")
            for name, sub in sorted(task.getTaskDict().items()):
                print(f"{name}: {type(sub).__module__}.{type(sub).__name__}")
        elif what == "history":
            go_on = "run" in args.show
            print(f"config history for {pattern}: not recorded by calexpress")
        elif what == "run":
            pass
        else:
            raise UsageError(
                f"unknown --show item {item!r}; use config[=GLOB], history=GLOB, data, tasks, run"
            )
    return go_on


def _process_one(config: Any, butler: Any, data_id: dict, doraise: bool) -> tuple[bool, str]:
    """Run ProcessCcdTask on one data ID; return (ok, one-line error)."""
    from calexpress.pipeline.processCcd import ProcessCcdTask

    label = format_data_id(data_id)
    token = _current_data_id.set(label)
    task = None
    try:
        task = ProcessCcdTask(config=config, butler=butler)
        task.runDataRef(butler.dataRef("raw", **data_id))
        return True, ""
    except Exception as exc:
        if doraise:
            raise
        message = f"Failed on dataId={label}: {type(exc).__name__}: {exc}".replace("\n", " ")
        log.error("%s", message)
        log.debug("%s", traceback.format_exc())
        return False, message
    finally:
        if task is not None:
            try:
                butler.put(task.getFullMetadata(), "processCcd_metadata", data_id)
            except Exception as exc:  # metadata must never hide the real outcome
                log.warning("Could not write processCcd_metadata for %s: %s", label, exc)
        _current_data_id.reset(token)


_WORKER: dict[str, Any] = {}


def _worker_init(config_text: str, output: str, input_: str, calib: str | None, levels: list[str],
                 longlog: bool) -> None:
    from calexpress.butler import Butler
    from calexpress.pipeline.processCcd import ProcessCcdConfig

    _setup_logging(levels, longlog)
    config = ProcessCcdConfig()
    config.loadFromString(config_text)
    config.freeze()
    _WORKER["config"] = config
    _WORKER["butler"] = Butler(output, parents=[input_], calib_root=calib)


def _worker_run(data_id: dict) -> tuple[dict, bool, str]:
    ok, message = _process_one(_WORKER["config"], _WORKER["butler"], data_id, doraise=False)
    return data_id, ok, message


def run_command(argv: Sequence[str]) -> int:
    """Run ``processCcd.py`` with ``argv`` (without the program name); return the exit status."""
    try:
        parser = ProcessCcdArgumentParser()
        args = parser.parse_args(argv)
        _setup_logging(args.loglevel, args.longlog)
        if args.debug:
            try:
                import debug  # noqa: F401  (a user's debug.py, as in LSST)
            except ImportError:
                log.warning("--debug given but no debug.py could be imported")
        butler = _make_butler(args)
        config = build_config(args, butler.camera)
        data_ids, unmatched = resolve_data_ids(butler, args.id)
        if args.show and not _show(args, config, butler, data_ids):
            return 0
        config.freeze()
        _check_or_write_config(butler, config, args)
    except UsageError as exc:
        print(f"processCcd.py: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # bad repository, unreadable registry, ...
        if "--doraise" in argv:
            raise
        print(f"processCcd.py: error: {type(exc).__name__}: {exc}".replace("\n", " "), file=sys.stderr)
        return 1

    for message in unmatched:
        log.error("%s", message)
    failures = len(unmatched)
    if not data_ids:
        if args.id is None:
            log.warning("No --id given: nothing to process (a bare --id selects everything)")
        return failures

    from tqdm import tqdm

    t0 = time.time()
    progress = tqdm(total=len(data_ids), desc="processCcd", unit="ccd", file=sys.stderr, disable=None)
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        if args.processes > 1 and len(data_ids) > 1:
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(
                processes=min(args.processes, len(data_ids)),
                initializer=_worker_init,
                initargs=(_config_text(config), args.output, args.input, args.calib, args.loglevel,
                          args.longlog),
                maxtasksperchild=1,
            ) as pool:
                pending = pool.imap_unordered(_worker_run, data_ids)
                for _ in data_ids:
                    _, ok, _ = pending.next(timeout=args.timeout)
                    failures += 0 if ok else 1
                    progress.update(1)
        else:
            for data_id in data_ids:
                ok, _ = _process_one(config, butler, data_id, args.doraise)
                failures += 0 if ok else 1
                progress.update(1)
    finally:
        progress.close()
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
    log.info("Processed %d data IDs in %.1f s; %d failed", len(data_ids), time.time() - t0, failures)
    return failures


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point of ``processCcd.py``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    status = run_command(argv)
    if "--noExit" in argv:
        return
    sys.exit(status)


if __name__ == "__main__":  # pragma: no cover
    main()
