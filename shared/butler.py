"""The data repository: `Butler` reads and writes datasets by type and data ID (LSST Gen2 style).

A repository is a folder or an S3 prefix holding

- ``_mapper`` (input repositories): the camera name, or a Gen2 mapper class that a camera YAML names as
  its ``gen2_mapper`` (so LSST Gen2 repositories are read as they are);
- ``registry.sqlite3`` / ``calibRegistry.sqlite3``: see `calexpress.registry`;
- ``repositoryCfg.yaml`` (output repositories): the camera, the parent repositories (relative paths for
  local parents) and the calibration root;
- dataset files at paths given by templates (camera overrides, else `default_templates`).

Reads search the repository, then its parents recursively; writes go to the repository itself, atomically.
See ``docs/repository.md``.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import re
import string
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import yaml

from . import storage
from .registry import CALIB_REGISTRY, RAW_REGISTRY, Registry, date_to_mjd, select_calib

__all__ = [
    "CALIB_TYPES",
    "DATASET_KINDS",
    "Butler",
    "ButlerDataRef",
    "ButlerError",
    "CalibNotFoundError",
    "DataIdError",
    "DatasetNotFoundError",
    "NoResultsError",
    "RepositoryError",
    "default_templates",
    "rerun_paths",
]

log = logging.getLogger(__name__)

REPOSITORY_CFG = "repositoryCfg.yaml"
MAPPER_FILE = "_mapper"

#: Storage kind of each dataset type (selects the reader / writer).
DATASET_KINDS: dict[str, str] = {
    "raw": "raw",
    "bias": "exposure",
    "dark": "exposure",
    "flat": "exposure",
    "fringe": "exposure",
    "defects": "defects",
    "linearizer": "linearizer",
    "crosstalk": "crosstalk",
    "postISRCCD": "exposure",
    "icExp": "exposure",
    "icExpBackground": "background",
    "icSrc": "catalog",
    "calexp": "exposure",
    "calexpBackground": "background",
    "src": "catalog",
    "srcMatch": "catalog",
    "srcMatchFull": "catalog",
    "processCcd_config": "text",
    "processCcd_metadata": "yaml",
    "icSrc_schema": "catalog",
    "src_schema": "catalog",
    "packages": "yaml",
}

#: Calibration dataset types (looked up in the calib registry by observation date).
CALIB_TYPES = ("bias", "dark", "flat", "fringe", "defects", "linearizer", "crosstalk")
#: Calibration types that depend on the filter.
FILTER_CALIBS = ("flat", "fringe")

_EXTENSIONS = {
    "raw": ".fits", "exposure": ".fits", "background": ".fits", "catalog": ".fits", "defects": ".fits",
    "linearizer": ".yaml", "crosstalk": ".yaml", "yaml": ".yaml", "text": ".py",
}


class ButlerError(Exception):
    """Base class of the repository errors."""


class DataIdError(ButlerError, ValueError):
    """A data ID with an unknown key, a value of the wrong type, or that matches several datasets."""


class NoResultsError(DataIdError, LookupError):
    """A data ID that matches nothing in the registry."""


class CalibNotFoundError(ButlerError, LookupError):
    """No calibration product of a type is valid for a data ID at its observation date."""


class DatasetNotFoundError(ButlerError, FileNotFoundError):
    """A dataset's file is in none of the repositories searched (the message names them)."""


class RepositoryError(ButlerError, ValueError):
    """A repository that cannot be used (unknown camera, different parents, ...)."""


def _read_error(url: str, problem: str) -> Exception:
    """`calexpress.fitsio.FitsReadError` naming the file and the problem (one line)."""
    try:
        from .fitsio import FitsReadError
    except ImportError:  # pragma: no cover - fitsio not there
        return OSError(f"{url}: {problem}")
    return FitsReadError(url, problem)


# ---------------------------------------------------------------------- templates
def _ordered_keys(keys: Iterable[str]) -> list[str]:
    keys = list(keys)
    head = [k for k in ("visit", "filter", "ccd") if k in keys]
    return head + [k for k in keys if k not in head]


def default_templates(data_id_keys: Iterable[str] = ("visit", "filter", "ccd")) -> dict[str, str]:
    """Default path templates (relative to the repository root); each path names its dataset type.

    With keys visit, filter, ccd: ``calexp/{visit}/calexp_{visit}_{filter}_{ccd}.fits`` etc.
    """
    keys = _ordered_keys(data_id_keys)
    first = keys[0] if keys else "visit"
    tail = "_".join("{%s}" % k for k in keys)  # noqa: UP031
    det = "ccd" if "ccd" in keys else ("detector" if "detector" in keys else None)
    det_part = "_{%s}" % det if det else ""  # noqa: UP031
    flt = "_{filter}" if "filter" in keys else ""
    out: dict[str, str] = {}
    for ds, kind in DATASET_KINDS.items():
        ext = _EXTENSIONS[kind]
        if ds in CALIB_TYPES:
            f = flt if ds in FILTER_CALIBS else ""
            out[ds] = f"{ds}/{ds}{f}{det_part}{ext}"
        elif ds.endswith("_config"):
            out[ds] = f"config/{ds[:-len('_config')]}.py"
        elif ds.endswith("_schema"):
            out[ds] = f"schema/{ds[:-len('_schema')]}.fits"
        elif ds == "packages":
            out[ds] = "config/packages.yaml"
        else:
            out[ds] = f"{ds}/{{{first}}}/{ds}_{tail}{ext}"
    return out


def _generic_template(datasetType: str, data_id_keys: Iterable[str]) -> str | None:  # noqa: N803
    """Template of a task's ``<task>_config``, ``<task>_metadata`` or ``<cat>_schema`` dataset."""
    if datasetType.endswith("_config"):
        return f"config/{datasetType[:-7]}.py"
    if datasetType.endswith("_schema"):
        return f"schema/{datasetType[:-7]}.fits"
    if datasetType.endswith("_metadata"):
        return default_templates(data_id_keys)["processCcd_metadata"].replace("processCcd", datasetType[:-9])
    return None


def _dataset_kind(datasetType: str) -> str | None:  # noqa: N803
    kind = DATASET_KINDS.get(datasetType)
    if kind is None:
        if datasetType.endswith("_config"):
            return "text"
        if datasetType.endswith("_metadata"):
            return "yaml"
        if datasetType.endswith("_schema"):
            return "catalog"
    return kind


_PCT = re.compile(r"%\((\w+)\)[-#0 +]*\d*(?:\.\d+)?[diouxXeEfFgGcrs]")


def template_keys(template: str) -> list[str]:
    """Data-ID keys a template uses (``{key}`` / ``{key:fmt}`` or Gen2 ``%(key)s``), in order, unique."""
    if "%(" in template:
        names = _PCT.findall(template)
    else:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f]
    out: list[str] = []
    for n in names:
        n = n.split(".")[0].split("[")[0]
        if n not in out:
            out.append(n)
    return out


def format_template(template: str, data_id: Mapping[str, Any]) -> str:
    """Fill *template* with *data_id* (`KeyError` for a missing key)."""
    if "%(" in template:
        return template % data_id
    return template.format(**data_id)


def _template_regex(template: str) -> re.Pattern:
    """A regex with one named group per key of *template* (for parsing file names back to data IDs)."""
    seen: set[str] = set()
    out = []
    if "%(" in template:
        pos = 0
        for m in _PCT.finditer(template):
            out.append(re.escape(template[pos:m.start()]))
            k = m.group(1)
            out.append(f"(?P={k})" if k in seen else f"(?P<{k}>[^/]+?)")
            seen.add(k)
            pos = m.end()
        out.append(re.escape(template[pos:]))
    else:
        for lit, field, _, _ in string.Formatter().parse(template):
            out.append(re.escape(lit))
            if field:
                out.append(f"(?P={field})" if field in seen else f"(?P<{field}>[^/]+?)")
                seen.add(field)
    return re.compile("^" + "".join(out) + "$")


def _template_glob(template: str, data_id: Mapping[str, Any]) -> str:
    """*template* with known keys filled and the others replaced by ``*``."""
    if "%(" in template:
        return _PCT.sub(lambda m: (m.group(0) % data_id) if m.group(1) in data_id else "*", template)
    out = []
    for lit, field, spec, _conv in string.Formatter().parse(template):
        out.append(lit.replace("[", "[[]").replace("*", "[*]").replace("?", "[?]"))
        if field:
            if field in data_id:
                out.append(("{0:%s}" % spec).format(data_id[field]) if spec else str(data_id[field]))  # noqa: UP031
            else:
                out.append("*")
    return "".join(out)


# ---------------------------------------------------------------------- repositoryCfg.yaml
class _CfgLoader(yaml.SafeLoader):
    """Safe loader that also reads LSST's ``!RepositoryCfg_v1`` and ``!!python/name:`` tags."""


def _unknown_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    value = loader.construct_scalar(node)
    if suffix.startswith(("tag:yaml.org,2002:python/name:", "python/name:", "name:")):
        return suffix.rpartition(":")[2] or value
    return value


_CfgLoader.add_multi_constructor("!", _unknown_tag)
_CfgLoader.add_multi_constructor("tag:yaml.org,2002:python/", _unknown_tag)


def _read_cfg(root: str) -> dict | None:
    url = storage.join(root, REPOSITORY_CFG)
    try:
        text = storage.read_text(url)
    except FileNotFoundError:
        return None
    try:
        cfg = yaml.load(text, Loader=_CfgLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        raise RepositoryError(f"{url}: not valid YAML: {exc}") from None
    if not isinstance(cfg, dict):
        raise RepositoryError(f"{url}: not a repository configuration")
    return cfg


def _norm_root(root: str | os.PathLike) -> str:
    root = os.fspath(root)
    if storage.is_remote(root):
        scheme, path = storage.split_url(root)
        return f"{scheme}://{path.rstrip('/')}"
    return os.path.normpath(os.path.abspath(storage.local_path(root)))


def _resolve_parent(root: str, parent: Any) -> str:
    """Absolute location of a parent recorded relative to *root*."""
    if isinstance(parent, Mapping):  # LSST writes nested RepositoryCfg mappings for some parents
        parent = parent.get("_root") or parent.get("root")
        if not parent:
            raise RepositoryError(f"{root}: a parent in {REPOSITORY_CFG} has no root")
    parent = os.fspath(parent)
    if storage.is_remote(parent) or os.path.isabs(parent):
        return _norm_root(parent)
    if storage.is_remote(root):
        raise RepositoryError(f"{root}: relative parent {parent!r} cannot be resolved against an S3 root")
    return _norm_root(os.path.join(root, parent))


def _record_parent(root: str, parent: str) -> str:
    """How *parent* is written in *root*'s repositoryCfg.yaml (relative when both are local)."""
    if storage.is_remote(root) or storage.is_remote(parent):
        return parent
    return os.path.relpath(parent, root)


def rerun_paths(root: str, rerun: str) -> tuple[str, str]:
    """``--rerun [IN:]OUT`` → ``(input, output)`` repositories (LSST Gen2 semantics).

    ``OUT`` alone gives ``(ROOT, ROOT/rerun/OUT)`` (or, if ``ROOT/rerun/OUT/_parent`` exists, a legacy
    link, that as input); ``IN:OUT`` gives ``(ROOT/rerun/IN, ROOT/rerun/OUT)``.
    """
    if not rerun or rerun.count(":") > 1:
        raise ValueError(f"--rerun {rerun!r}: expected OUTPUT or INPUT:OUTPUT")
    inp, _, out = rerun.rpartition(":")
    if not out or (":" in rerun and not inp):
        raise ValueError(f"--rerun {rerun!r}: expected OUTPUT or INPUT:OUTPUT")
    output = storage.join(root, "rerun", out)
    if inp:
        return storage.join(root, "rerun", inp), output
    legacy = storage.join(output, "_parent")
    if not storage.is_remote(legacy) and os.path.exists(legacy):
        return os.path.realpath(legacy), output
    return os.fspath(root), output


# ---------------------------------------------------------------------- data refs
class ButlerDataRef:
    """A data ID bound to a butler (what LSST tasks call a ``sensorRef``)."""

    def __init__(self, butler: Butler, datasetType: str, dataId: Mapping[str, Any]) -> None:  # noqa: N803
        self.butler = butler
        self.datasetType = datasetType
        self.dataId: dict[str, Any] = dict(dataId)

    def get(self, datasetType: str | None = None, **rest: Any) -> Any:  # noqa: N803
        """``butler.get(datasetType or the ref's type, dataId + rest)``."""
        return self.butler.get(datasetType or self.datasetType, {**self.dataId, **rest})

    def put(self, obj: Any, datasetType: str | None = None, **rest: Any) -> None:  # noqa: N803
        """``butler.put(obj, datasetType, dataId + rest)``."""
        self.butler.put(obj, datasetType or self.datasetType, {**self.dataId, **rest})

    def datasetExists(self, datasetType: str | None = None, write: bool = False, **rest: Any) -> bool:  # noqa: N802,N803
        """True if the dataset exists (in the output only when *write*)."""
        return self.butler.exists(datasetType or self.datasetType, {**self.dataId, **rest}, write=write)

    def get_uri(self, datasetType: str | None = None, **rest: Any) -> str:  # noqa: N803
        """Location of the dataset."""
        return self.butler.get_uri(datasetType or self.datasetType, {**self.dataId, **rest})

    def get_calib(self, calibType: str, obs_date: Any = None) -> Any:  # noqa: N803
        """``butler.get_calib(calibType, dataId, obs_date)``."""
        return self.butler.get_calib(calibType, self.dataId, obs_date)

    def getButler(self) -> Butler:  # noqa: N802
        """The butler."""
        return self.butler

    def __repr__(self) -> str:
        return f"ButlerDataRef({self.datasetType!r}, {self.dataId})"


# ---------------------------------------------------------------------- the butler
class Butler:
    """Read and write datasets of a repository (local folder or ``s3://bucket/prefix``).

    Parameters
    ----------
    root
        The repository.  Writes go here.
    parents
        Input repositories searched after *root* (recorded in *root*'s ``repositoryCfg.yaml`` on first use;
        a repository re-used with different parents is an error).
    calib_root
        Repository holding ``calibRegistry.sqlite3`` and the calibrations (default: the first of *root*
        and its parents that has one).
    camera
        Camera name, YAML path or `calexpress.camera.Camera` (default: from ``_mapper`` /
        ``repositoryCfg.yaml`` / the parents).
    compress
        Write exposures with lossless tile compression.
    calib_cache_size
        Keep this many calibration products in memory (0: none).  Cached exposures have read-only arrays,
        so a caller that changes a calibration in place gets an error instead of wrong numbers.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        parents: Iterable[str | os.PathLike] | None = None,
        calib_root: str | os.PathLike | None = None,
        camera: Any = None,
        compress: bool = False,
        calib_cache_size: int = 0,
        _seen: frozenset[str] = frozenset(),
    ) -> None:
        self.root = _norm_root(root)
        self.compress = compress
        self.calib_cache_size = int(calib_cache_size)
        self._calib_cache: OrderedDict[tuple, Any] = OrderedDict()
        if self.root in _seen:
            raise RepositoryError(f"{self.root}: repository is its own parent (cycle in repositoryCfg.yaml)")
        cfg = _read_cfg(self.root)
        self._cfg = cfg
        given = [_norm_root(p) for p in parents] if parents is not None else None
        if given is not None and self.root in given:
            raise RepositoryError(f"{self.root}: output repository cannot be its own input")
        if cfg is not None:
            recorded = [_resolve_parent(self.root, p) for p in (cfg.get("_parents") or [])]
            if given is not None and sorted(given) != sorted(recorded):
                raise RepositoryError(
                    f"{self.root}: repository already exists with parents {recorded}; it cannot be re-used "
                    f"with parents {given} (choose another output or remove it)"
                )
            parent_roots = recorded
            if calib_root is None:
                calib_root = (cfg.get("_mapperArgs") or {}).get("calibRoot")
                if calib_root is not None:
                    calib_root = _resolve_parent(self.root, calib_root)
        else:
            parent_roots = given or []
        for p in list(parent_roots):
            if not storage.exists(p):
                if given is not None:
                    raise RepositoryError(f"{self.root}: parent repository {p} does not exist")
                # a recorded parent that is not reachable from here (e.g. an S3 output read elsewhere):
                # the repository's own datasets stay readable
                log.warning("%s: parent repository %s is not reachable; reading without it", self.root, p)
                parent_roots.remove(p)
        self.parents: list[Butler] = [
            Butler(p, compress=compress, _seen=_seen | {self.root}) for p in parent_roots
        ]
        self.calib_root = _norm_root(calib_root) if calib_root is not None else None
        self._camera = self._find_camera(camera)
        if cfg is None and given:
            self._write_cfg(parent_roots)
        self._templates: dict[str, str] | None = None
        self._raw_reg: tuple[Butler, Registry] | None | bool = False
        self._calib_regs: list[tuple[str, Registry]] | None = None

    # -- construction helpers --------------------------------------------------------------------
    @classmethod
    def for_output(
        cls, output_root: str, input_root: str, calib_root: str | None = None, **kwargs: Any
    ) -> Butler:
        """The butler of an output repository whose parent is *input_root* (created if needed)."""
        return cls(output_root, parents=[input_root], calib_root=calib_root, **kwargs)

    def _find_camera(self, camera: Any) -> Any:
        from .camera import get_camera

        if camera is not None:
            return get_camera(camera)
        mapper_url = storage.join(self.root, MAPPER_FILE)
        name = None
        try:
            name = storage.read_text(mapper_url).strip()
        except FileNotFoundError:
            if self._cfg is not None and self._cfg.get("_mapper"):
                name = str(self._cfg["_mapper"]).strip()
                mapper_url = storage.join(self.root, REPOSITORY_CFG)
        if name:
            return _camera_for_mapper(name, mapper_url)
        for p in self.parents:
            if p.camera_or_none is not None:
                return p.camera_or_none
        return None

    def _write_cfg(self, parent_roots: list[str]) -> None:
        cfg: dict[str, Any] = {
            "_root": None,
            "_mapper": self._camera.name if self._camera is not None else None,
            "_mapperArgs": ({"calibRoot": _record_parent(self.root, self.calib_root)}
                            if self.calib_root else {}),
            "_parents": [_record_parent(self.root, p) for p in parent_roots],
            "_policy": None,
        }
        storage.makedirs(self.root)
        storage.atomic_write(storage.join(self.root, REPOSITORY_CFG), yaml.safe_dump(cfg, sort_keys=False))
        self._cfg = cfg

    # -- camera and keys -------------------------------------------------------------------------
    @property
    def camera(self) -> Any:
        """The `calexpress.camera.Camera` of the repository."""
        if self._camera is None:
            raise RepositoryError(f"{self.root}: no camera known (no _mapper, repositoryCfg.yaml or parent)")
        return self._camera

    @property
    def camera_or_none(self) -> Any:
        """The camera, or None for a repository that does not name one."""
        return self._camera

    @property
    def data_id_keys(self) -> dict[str, type]:
        """Data-ID keys and their types (from the camera; empty when there is none)."""
        return dict(self._camera.data_id_keys) if self._camera is not None else {}

    def _implied_value(self, key: str) -> Any:
        """Value of a camera key that a (Gen2) registry leaves out, e.g. ``ccd`` of a one-CCD camera."""
        cam = self._camera
        if cam is None:
            return None
        spec = getattr(cam, "_data_id_specs", {}).get(key) or {}
        if "value" in spec:
            return cam.data_id_keys[key](spec["value"])
        if key in ("ccd", "detector") and len(cam.detectors) == 1:
            return next(iter(cam.detectors))
        return None

    @property
    def templates(self) -> dict[str, str]:
        """Path templates: defaults overridden by the camera's ``path_templates``."""
        if self._templates is None:
            t = default_templates(self.data_id_keys or ("visit", "filter", "ccd"))
            if self._camera is not None:
                t.update(getattr(self._camera, "path_templates", {}) or {})
            self._templates = t
        return self._templates

    def _template(self, datasetType: str) -> str:  # noqa: N803
        try:
            return self.templates[datasetType]
        except KeyError:
            generic = _generic_template(datasetType, self.data_id_keys or ("visit", "filter", "ccd"))
            if generic is not None:
                return generic
            raise DataIdError(
                f"unknown dataset type {datasetType!r}; known types: {', '.join(sorted(self.templates))}"
            ) from None

    # -- registries ------------------------------------------------------------------------------
    def repositories(self) -> list[Butler]:
        """This repository, then its parents recursively (the order reads search them)."""
        return self._chain()

    def _chain(self) -> list[Butler]:
        """This repository, then its parents (depth first)."""
        out: list[Butler] = [self]
        for p in self.parents:
            for b in p._chain():
                if b.root not in [o.root for o in out]:
                    out.append(b)
        return out

    def _raw_registry(self) -> tuple[Butler, Registry] | None:
        """(repository, registry) of the first repository in the chain with a raw registry."""
        if self._raw_reg is False:
            found = None
            for b in self._chain():
                url = storage.join(b.root, RAW_REGISTRY)
                if storage.exists(url):
                    found = (b, Registry(url))
                    break
            self._raw_reg = found
        return self._raw_reg  # type: ignore[return-value]

    def _calib_registries(self) -> list[tuple[str, Registry]]:
        if self._calib_regs is None:
            roots = [self.calib_root] if self.calib_root else [b.root for b in self._chain()]
            regs = []
            for r in roots:
                url = storage.join(r, CALIB_REGISTRY)
                if storage.exists(url):
                    regs.append((r, Registry(url)))
            self._calib_regs = regs
        return self._calib_regs

    def refresh(self) -> None:
        """Forget cached registries (after an ingest into this repository)."""
        self._raw_reg = False
        self._calib_regs = None

    # -- data IDs --------------------------------------------------------------------------------
    def _extra_columns(self) -> list[str]:
        reg = self._raw_registry()
        if reg is None:
            return []
        return [c for c in reg[1].columns("raw")
                if c not in ("id", "path", "camera") and c not in self.data_id_keys]

    def _check_keys(self, data_id: Mapping[str, Any], extra_ok: Iterable[str] = ()) -> dict[str, Any]:
        """Validate key names and cast values to the camera's types."""
        keys = self.data_id_keys
        if not keys:
            return dict(data_id)
        extra = set(self._extra_columns()) | set(extra_ok)
        out: dict[str, Any] = {}
        for k, v in data_id.items():
            if k in keys:
                typ = keys[k]
                try:
                    out[k] = typ(v) if not isinstance(v, typ) else v
                except (TypeError, ValueError):
                    raise DataIdError(f"data ID key {k}={v!r} is not {typ.__name__}") from None
            elif k in extra:
                out[k] = v
            else:
                more = sorted(extra - set(extra_ok))
                also = f" (registry columns: {', '.join(more)})" if more else ""
                raise DataIdError(
                    f"unknown data ID key {k!r} for camera {self.camera.name}; valid keys: "
                    f"{', '.join(keys)}{also}"
                )
        return out

    def _raw_rows(self, partial: Mapping[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any], Butler]]:
        """(data ID, registry row, repository) of the raws matching *partial*."""
        reg = self._raw_registry()
        if reg is None:
            return []
        repo, registry = reg
        cols = registry.columns("raw")
        where = {k: v for k, v in partial.items() if k in cols}
        out = []
        order = [c for c in _ordered_keys(self.data_id_keys) if c in cols]
        for row in registry.select("raw", where, order_by=order):
            did: dict[str, Any] = {}
            for k, typ in self.data_id_keys.items():
                v = row.get(k) if k in cols else None
                if v is None:
                    v = self._implied_value(k)
                if v is not None:
                    with contextlib.suppress(TypeError, ValueError):
                        v = typ(v)
                did[k] = v
            if any(k not in cols and did.get(k) != v for k, v in partial.items() if k in did):
                continue
            out.append((did, row, repo))
        return out

    def _glob_ids(self, datasetType: str, partial: Mapping[str, Any]) -> list[dict[str, Any]]:  # noqa: N803
        """Data IDs of existing files of *datasetType* (when no registry can tell)."""
        template = self._template(datasetType)
        rx = _template_regex(template)
        found: list[dict[str, Any]] = []
        for b in self._chain():
            pattern = storage.join(b.root, _template_glob(template, partial))
            for url in storage.glob(pattern):
                rel = storage.split_url(url)[1][len(storage.split_url(b.root)[1]):].lstrip("/")
                m = rx.match(rel.replace(os.sep, "/"))
                if not m:
                    continue
                did = dict(partial)
                for k, v in m.groupdict().items():
                    typ = self.data_id_keys.get(k, str)
                    try:
                        did[k] = typ(v)
                    except (TypeError, ValueError):
                        did[k] = v
                if did not in found:
                    found.append(did)
        return found

    def query_data_ids(self, datasetType: str = "raw", **partial: Any) -> list[dict[str, Any]]:  # noqa: N803
        """Full data IDs matching a partial one (``{}`` = all), completed from the registry.

        Without a raw registry in the chain, the data IDs of existing files of *datasetType* are returned.

        Raises
        ------
        DataIdError
            For a key the camera does not know (the message lists the valid keys).
        """
        partial = self._check_keys(partial)
        if datasetType in CALIB_TYPES:
            out = []
            for _, reg in self._calib_registries():
                for row in reg.select(datasetType):
                    did = {k: row.get(k) for k in ("filter", "ccd", "calibDate", "validStart", "validEnd")}
                    if all(str(did.get(k)) == str(v) for k, v in partial.items() if k in did):
                        out.append(did)
            return out
        if self._raw_registry() is not None:
            rows = self._raw_rows(partial)
            keys = list(self.data_id_keys)
            ids = []
            for did, _, _ in rows:
                d = {k: did[k] for k in keys}
                if d not in ids:
                    ids.append(d)
            return ids
        return self._glob_ids(datasetType, partial)

    def _complete(self, datasetType: str, data_id: Mapping[str, Any] | None, ids: Mapping[str, Any]  # noqa: N803
                  ) -> dict[str, Any]:
        merged = {**(data_id or {}), **ids}
        backup = merged.pop("backup", None)
        did = self._check_keys(merged)
        if backup is not None:
            did["backup"] = backup
        if datasetType in CALIB_TYPES:
            return did
        needed = [k for k in template_keys(self._template(datasetType)) if k != "backup"]
        missing = [k for k in needed if k not in did]
        if not missing:
            return did
        query = {k: v for k, v in did.items() if k != "backup"}
        if self._raw_registry() is not None:
            matches = [m for m, _, _ in self._raw_rows(query)]
        else:
            matches = self._glob_ids(datasetType, query)
        if not matches:
            raise NoResultsError(f"no data found for dataId={_fmt(query)} ({datasetType})")
        values = {k: {m.get(k) for m in matches} for k in missing}
        ambiguous = [k for k, vs in values.items() if len(vs) != 1]
        if ambiguous:
            raise DataIdError(
                f"dataId={_fmt(query)} is incomplete for {datasetType}: {len(matches)} matches differ in "
                f"{', '.join(ambiguous)}"
            )
        for k, vs in values.items():
            did[k] = next(iter(vs))
        return did

    # -- locations -------------------------------------------------------------------------------
    def _relpath(self, datasetType: str, did: Mapping[str, Any]) -> str:  # noqa: N803
        template = self._template(datasetType)
        try:
            rel = format_template(template, did)
        except KeyError as exc:
            raise DataIdError(f"dataId={_fmt(did)} lacks key {exc.args[0]!r} needed by {datasetType} "
                              f"template {template!r}") from None
        if did.get("backup") is not None:
            rel += f"~{did['backup']}"
        return rel

    def _candidates(self, datasetType: str, did: Mapping[str, Any]) -> list[str]:  # noqa: N803
        if datasetType == "raw":
            rows = self._raw_rows({k: v for k, v in did.items() if k != "backup"})
            if len(rows) == 1:
                _, row, repo = rows[0]
                p = row.get("path")
                if p:
                    return [p if (storage.is_remote(p) or os.path.isabs(p)) else storage.join(repo.root, p)]
                return [storage.join(repo.root, self._relpath("raw", did))]
        rel = self._relpath(datasetType, did)
        return [storage.join(b.root, rel) for b in self._chain()]

    def get_uri(self, datasetType: str, dataId: Mapping[str, Any] | None = None, **ids: Any) -> str:  # noqa: N803
        """Location of a dataset: the first existing one in the chain, else where `put` would write it."""
        if datasetType in CALIB_TYPES and datasetType not in ("",):
            with contextlib.suppress(CalibNotFoundError, NoResultsError):
                return self._calib_location(datasetType, self._complete_calib_id(dataId, ids), None)[0]
        did = self._complete(datasetType, dataId, ids)
        for url in self._candidates(datasetType, did):
            if storage.exists(url):
                return url
        return storage.join(self.root, self._relpath(datasetType, did))

    def exists(self, datasetType: str, dataId: Mapping[str, Any] | None = None, *, write: bool = False,  # noqa: N803
               **ids: Any) -> bool:
        """True if the dataset exists (anywhere in the chain; only in this repository when *write*)."""
        try:
            if datasetType in CALIB_TYPES and not write:
                self._calib_location(datasetType, self._complete_calib_id(dataId, ids), None)
                return True
            did = self._complete(datasetType, dataId, ids)
        except (NoResultsError, CalibNotFoundError):
            return False
        if write:
            return storage.exists(storage.join(self.root, self._relpath(datasetType, did)))
        return any(storage.exists(u) for u in self._candidates(datasetType, did))

    # -- get / put -------------------------------------------------------------------------------
    def get(self, datasetType: str, dataId: Mapping[str, Any] | None = None, **ids: Any) -> Any:  # noqa: N803
        """Read a dataset.

        Raises
        ------
        DataIdError, NoResultsError
            Bad or unmatched data ID.
        DatasetNotFoundError
            No file in the chain (the message names the places searched).
        calexpress.fitsio.FitsReadError
            A file that cannot be read (names the file and the problem).
        """
        if datasetType in CALIB_TYPES:
            return self.get_calib(datasetType, {**(dataId or {}), **ids})
        did = self._complete(datasetType, dataId, ids)
        urls = self._candidates(datasetType, did)
        for url in urls:
            if storage.exists(url):
                return self._read(datasetType, url, did)
        raise DatasetNotFoundError(
            f"{datasetType} for dataId={_fmt(did)} not found; looked for {', '.join(urls)}"
        )

    def put(self, obj: Any, datasetType: str, dataId: Mapping[str, Any] | None = None, **ids: Any) -> str:  # noqa: N803
        """Write *obj* atomically into this repository; returns its location."""
        did = self._complete(datasetType, dataId, ids)
        url = storage.join(self.root, self._relpath(datasetType, did))
        kind = _dataset_kind(datasetType) or _kind_of(obj)
        storage.atomic_write(url, self._writer(kind, obj, url))
        return url

    def dataRef(self, datasetType: str = "raw", dataId: Mapping[str, Any] | None = None, **ids: Any  # noqa: N802,N803
                ) -> ButlerDataRef:
        """A `ButlerDataRef` for one full data ID (partial IDs completed from the registry).

        Raises
        ------
        NoResultsError
            If the data ID matches nothing; `DataIdError` if it matches several.
        """
        partial = {**(dataId or {}), **ids}
        if self._raw_registry() is None or datasetType in CALIB_TYPES:
            return ButlerDataRef(self, datasetType, self._check_keys(partial))
        matches = self.query_data_ids("raw", **partial)
        if not matches:
            raise NoResultsError(f"no data found for dataId={_fmt(partial)}")
        if len(matches) > 1:
            raise DataIdError(f"dataId={_fmt(partial)} matches {len(matches)} raws; give more keys")
        return ButlerDataRef(self, datasetType, matches[0])

    def subset(self, datasetType: str = "raw", **partial: Any) -> list[ButlerDataRef]:  # noqa: N803
        """Data refs of every data ID matching *partial*."""
        return [ButlerDataRef(self, datasetType, d) for d in self.query_data_ids(datasetType, **partial)]

    # -- calibrations ----------------------------------------------------------------------------
    def _complete_calib_id(self, dataId: Mapping[str, Any] | None, ids: Mapping[str, Any]) -> dict[str, Any]:  # noqa: N803
        return self._check_keys({**(dataId or {}), **ids}, extra_ok=("calibDate",))

    def _obs_date(self, did: Mapping[str, Any]) -> Any:
        query = {k: v for k, v in did.items() if k in self.data_id_keys}
        rows = self._raw_rows(query)
        dates = {r.get("taiObs") for _, r, _ in rows}
        if len(dates) == 1:
            return next(iter(dates))
        return None

    def _calib_location(self, calibType: str, did: Mapping[str, Any], obs_date: Any  # noqa: N803
                        ) -> tuple[str, dict[str, Any]]:
        did = dict(did)
        if obs_date is None:
            obs_date = self._obs_date(did)
        if "filter" not in did or "ccd" not in did:
            with contextlib.suppress(ButlerError):
                rows = self._raw_rows({k: v for k, v in did.items() if k in self.data_id_keys})
                if len(rows) == 1:
                    did = {**rows[0][0], **did}
        if "ccd" not in did and self._implied_value("ccd") is not None:
            did["ccd"] = self._implied_value("ccd")
        regs = self._calib_registries()
        searched = []
        for root, reg in regs:
            searched.append(root)
            if not reg.has_table(calibType):
                continue
            row = select_calib(
                reg.select(calibType), obs_date,
                filter=did.get("filter"), ccd=did.get("ccd", did.get("detector")),
                match_filter=calibType in FILTER_CALIBS,
            )
            if row is None:
                continue
            path = row.get("path")
            if path:
                url = path if (storage.is_remote(path) or os.path.isabs(path)) else storage.join(root, path)
            else:
                fill = {**did, **{k: row[k] for k in ("filter", "ccd", "calibDate")
                                  if row.get(k) is not None}}
                if calibType not in FILTER_CALIBS:
                    fill.setdefault("filter", did.get("filter"))
                try:
                    url = storage.join(root, format_template(self._template(calibType), fill))
                except KeyError:
                    url = storage.join(root, calibType)
                if not storage.exists(url):
                    # Gen2 repository without paths: a single file in the calib type's folder
                    files = [f for f in storage.listdir(storage.join(root, calibType))]
                    if len(files) == 1:
                        url = storage.join(root, calibType, files[0])
            return url, {**row, "_dataId": did}
        where = f" in {', '.join(searched)}" if searched else " (no calibRegistry.sqlite3 found)"
        date_text = _date_text(obs_date)
        raise CalibNotFoundError(
            f"no {calibType} calibration valid for "
            f"dataId={_fmt({k: v for k, v in did.items() if k != 'backup'})} at {date_text}{where}"
        )

    def get_calib(self, calibType: str, dataId: Mapping[str, Any] | None = None, obs_date: Any = None) -> Any:  # noqa: N803
        """The *calibType* product valid for *dataId* at *obs_date* (default: the raw's ``taiObs``).

        Raises
        ------
        CalibNotFoundError
            Naming the type, data ID and date when no registered product is valid.
        """
        did = self._complete_calib_id(dataId, {})
        url, row = self._calib_location(calibType, did, obs_date)
        det = row["_dataId"].get("ccd", row["_dataId"].get("detector"))
        key = (calibType, url, det)
        if key in self._calib_cache:
            self._calib_cache.move_to_end(key)
            return self._calib_cache[key]
        if not storage.exists(url):
            raise DatasetNotFoundError(
                f"{calibType} for dataId={_fmt(did)}: registered file {url} is missing")
        obj = self._read(calibType, url, row["_dataId"])
        if self.calib_cache_size > 0:
            _freeze_arrays(obj)
            self._calib_cache[key] = obj
            while len(self._calib_cache) > self.calib_cache_size:
                self._calib_cache.popitem(last=False)
        return obj

    def put_calib(
        self,
        obj: Any,
        calibType: str,  # noqa: N803
        *,
        filter: str | None = None,
        ccd: int | None = None,
        calib_date: Any = None,
        valid_start: Any = None,
        valid_end: Any = None,
    ) -> str:
        """Write a calibration product into this repository and register it in its calib registry.

        The file goes to ``<type>/<calibDate YYYYMMDD>/<type>[_<filter>]_<ccd>.<ext>``; NULL validity bounds
        are open.  Returns the location.
        """
        from .registry import CALIB_REGISTRY as _CR

        if calibType not in CALIB_TYPES:
            raise DataIdError(f"unknown calibration type {calibType!r}; known: {', '.join(CALIB_TYPES)}")
        for v in (calib_date, valid_start, valid_end):
            date_to_mjd(v)  # validates
        kind = DATASET_KINDS[calibType]
        stamp = re.sub(r"[^0-9]", "", str(calib_date))[:8] if calib_date is not None else "undated"
        parts = [calibType] + ([str(filter)] if filter is not None and calibType in FILTER_CALIBS else [])
        parts += [str(ccd)] if ccd is not None else []
        rel = f"{calibType}/{stamp}/{'_'.join(parts)}{_EXTENSIONS[kind]}"
        url = storage.join(self.root, rel)
        storage.atomic_write(url, self._writer(kind, obj, url))
        with Registry.edit(storage.join(self.root, _CR)) as reg:
            reg.ensure_table(calibType, {"calibDate": "TEXT", "validStart": "TEXT", "validEnd": "TEXT",
                                         "filter": "TEXT", "ccd": "INTEGER", "path": "TEXT"})
            row = {"calibDate": _txt(calib_date), "validStart": _txt(valid_start),
                   "validEnd": _txt(valid_end), "filter": filter if calibType in FILTER_CALIBS else None,
                   "ccd": ccd, "path": rel}
            old = reg.select(calibType, {k: v for k, v in row.items() if k != "path"})
            if not old:
                reg.insert(calibType, row)
        self._calib_regs = None
        self._calib_cache.clear()
        return url

    # -- formatters ------------------------------------------------------------------------------
    def _read(self, datasetType: str, url: str, did: Mapping[str, Any]) -> Any:  # noqa: N803
        kind = _dataset_kind(datasetType) or _kind_from_name(url)
        if kind == "text":
            return storage.read_text(url)
        if kind == "yaml":
            try:
                return yaml.safe_load(storage.read_text(url))
            except yaml.YAMLError as exc:
                raise _read_error(url, f"not valid YAML: {exc}") from None
        with _local_copy(url) as path:
            try:
                return _READERS[kind](self, path, did)
            except FileNotFoundError:
                raise
            except Exception as exc:
                text = str(exc)
                if path in text and path == url:
                    raise  # already names the file
                if path in text:
                    problem = text.replace(path + ": ", "").replace(path, url)
                    raise _read_error(url, problem) from exc
                raise _read_error(url, f"cannot read {datasetType}: {exc}") from exc

    def _writer(self, kind: str, obj: Any, url: str) -> Callable[[str], Any] | bytes | str:
        if kind == "text":
            return obj if isinstance(obj, str | bytes) else str(obj)
        if kind == "yaml":
            return yaml.safe_dump(_plain(obj), sort_keys=False, default_flow_style=False)
        if kind in ("exposure", "raw"):
            return lambda path: obj.write(path, compress=self.compress)
        if kind == "catalog":
            try:
                from .catalog import write_catalog
            except ImportError:  # pragma: no cover - before calexpress.catalog exists
                return lambda path: obj.write(path, format="fits", overwrite=True)
            return lambda path: write_catalog(obj, path)
        if hasattr(obj, "write"):
            return lambda path: obj.write(path)
        raise ButlerError(f"cannot write a {type(obj).__name__} to {url}")

    def __repr__(self) -> str:
        return f"Butler({self.root!r}, parents={[p.root for p in self.parents]})"


# ---------------------------------------------------------------------- helpers
def _txt(value: Any) -> str | None:
    """Registry text of a date (ISO, TAI for `astropy.time.Time`)."""
    if value is None:
        return None
    from astropy.time import Time

    if isinstance(value, Time):
        return value.tai.isot
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _fmt(did: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v!r}" for k, v in did.items()) + "}"


def _date_text(obs_date: Any) -> str:
    if obs_date is None:
        return "an unknown date"
    mjd = date_to_mjd(obs_date)
    if mjd is None:
        return str(obs_date)
    from astropy.time import Time

    return f"{Time(mjd, format='mjd', scale='tai').isot} TAI"


def _camera_for_mapper(name: str, where: str) -> Any:
    from .camera import CameraError, available_cameras, get_camera

    with contextlib.suppress(CameraError):
        return get_camera(name)
    for cam_name in available_cameras():
        with contextlib.suppress(CameraError):
            cam = get_camera(cam_name)
            if cam.gen2_mapper and str(cam.gen2_mapper) == name:
                return cam
    raise RepositoryError(
        f"{where}: mapper {name!r} matches no camera (known cameras: {available_cameras()})")


@contextlib.contextmanager
def _local_copy(url: str):
    """A local path for *url* (a temporary download for S3)."""
    if not storage.is_remote(url):
        yield storage.local_path(url)
        return
    name = storage.basename(url)
    suffix = name[name.find("."):] if "." in name else ""
    fd, tmp = tempfile.mkstemp(prefix="calexpress-get-", suffix=suffix)
    os.close(fd)
    try:
        storage.get_local_file(url, tmp)
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _kind_of(obj: Any) -> str:
    if isinstance(obj, str | bytes):
        return "text"
    if isinstance(obj, dict):
        return "yaml"
    with contextlib.suppress(ImportError):
        from astropy.table import Table

        if isinstance(obj, Table):
            return "catalog"
    if hasattr(obj, "to_hdulist"):
        return "exposure"
    return "object"


def _kind_from_name(url: str) -> str:
    if url.endswith((".yaml", ".yml")):
        return "yaml"
    if url.endswith((".py", ".txt")) or "~" in url.rpartition("/")[2]:
        return "text"
    return "exposure"


def _plain(obj: Any) -> Any:
    """A YAML-safe copy of *obj* (numpy scalars to Python, unknown objects to text)."""
    if hasattr(obj, "to_dict") and not isinstance(obj, dict):
        obj = obj.to_dict()
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if hasattr(obj, "item") and callable(obj.item):
        with contextlib.suppress(Exception):
            return _plain(obj.item())
    if hasattr(obj, "tolist"):
        with contextlib.suppress(Exception):
            return _plain(obj.tolist())
    return str(obj)


def _freeze_arrays(obj: Any) -> None:
    """Make the numpy arrays of a cached calibration read-only."""
    import numpy as np

    for name in ("image", "mask", "variance", "coeffs"):
        arr = getattr(obj, name, None)
        if isinstance(arr, np.ndarray):
            arr.flags.writeable = False


def _call_read(cls: Any, path: str, did: Mapping[str, Any]) -> Any:
    read = cls.read
    try:
        params = inspect.signature(read).parameters
    except (TypeError, ValueError):  # pragma: no cover
        params = {}
    det = did.get("ccd", did.get("detector"))
    if "detector" in params and det is not None:
        return read(path, detector=det)
    return read(path)


def _read_raw(butler: Butler, path: str, did: Mapping[str, Any]) -> Any:
    cam = butler.camera
    det = did.get("ccd", did.get("detector"))
    if det is not None and len(cam.detectors) > 1:
        return cam.read_raw(path, detector=det)
    return cam.read_raw(path)


def _read_exposure(butler: Butler, path: str, did: Mapping[str, Any]) -> Any:
    from .exposure import Exposure

    return Exposure.read(path)


def _read_catalog(butler: Butler, path: str, did: Mapping[str, Any]) -> Any:
    try:
        from .catalog import read_catalog
    except ImportError:  # pragma: no cover - before calexpress.catalog exists
        from astropy.table import Table

        return Table.read(path, format="fits")
    return read_catalog(path)


def _read_background(butler: Butler, path: str, did: Mapping[str, Any]) -> Any:
    from .background import BackgroundList

    return BackgroundList.read(path)


def _read_defects(butler: Butler, path: str, did: Mapping[str, Any]) -> Any:
    from .calibs import Defects

    return _call_read(Defects, path, did)


def _read_linearizer(butler: Butler, path: str, did: Mapping[str, Any]) -> Any:
    from .calibs import Linearizer

    return _call_read(Linearizer, path, did)


def _read_crosstalk(butler: Butler, path: str, did: Mapping[str, Any]) -> Any:
    from .calibs import CrosstalkCalib

    return _call_read(CrosstalkCalib, path, did)


_READERS: dict[str, Callable[[Butler, str, Mapping[str, Any]], Any]] = {
    "raw": _read_raw,
    "exposure": _read_exposure,
    "catalog": _read_catalog,
    "background": _read_background,
    "defects": _read_defects,
    "linearizer": _read_linearizer,
    "crosstalk": _read_crosstalk,
}
