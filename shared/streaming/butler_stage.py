"""`ButlerStageProcessor`: run a stage task's ``runDataRef`` on a Butler over S3.

The stage adapters (``calexpress.<stage>.service``) subclass it with the task
class and the datasets they announce.  For each event the processor

1. checks that the input objects named by the event exist (missing: a
   permanent `FileNotFoundError` naming the URI) and match their checksum;
2. gets a (cached) output Butler ``<repo>/rerun/<collection>`` whose parent is
   the input repository ``<repo>``, exactly the layout ``processCcd.py --rerun``
   writes, so outputs are identical to processCcd's for the same config;
3. runs ``task.runDataRef(dataRef)``, which reads its inputs and writes its
   outputs through the Butler (atomic writes);
4. returns the URIs and ETags of the announced datasets.

Configs: stage defaults, then the camera's ``config_overrides`` /
``<stage>_overrides`` (as processCcd applies them), then the service's config
file; the write flags the next stage needs are forced on.  The Butler keeps
calibrations in memory keyed by the product chosen by validity range, and the
reference-catalog loader keeps shards; both are instrumented as warm caches.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any, ClassVar

from .. import metrics, storage
from ..config import apply_overrides, config_hash
from ..events import Event
from .service import PermanentError, StageContext, StageOutput, StageProcessor, object_checksum

__all__ = ["ButlerStageProcessor", "CountingCache", "quality_from_metadata"]

log = logging.getLogger(__name__)


class CountingCache(OrderedDict):
    """An OrderedDict whose membership tests count warm-cache hits and misses."""

    def __init__(self, stage: str, name: str, *args: Any) -> None:
        super().__init__(*args)
        self._labels = (stage, name)

    def __contains__(self, key: Hashable) -> bool:
        found = super().__contains__(key)
        stage, name = self._labels
        metrics.CACHE_REQUESTS.labels(stage=stage, cache=name, result="hit" if found else "miss").inc()
        return found


def quality_from_metadata(md: Any) -> dict[str, float | None]:
    """Per-CCD quality summary from calexp metadata (``PSFFWHM``, ``MAGZERO``, ``ASTRMRMS``, ``LIMMAG5``)."""

    def val(key: str) -> float | None:
        try:
            v = md.get(key) if md is not None else None
            return None if v is None else float(v)
        except (TypeError, ValueError):
            return None

    return {"psf_fwhm_arcsec": val("PSFFWHM"), "zero_point": val("MAGZERO"),
            "astrometric_rms_mas": val("ASTRMRMS"), "limiting_mag": val("LIMMAG5")}


class ButlerStageProcessor(StageProcessor):
    """Base of the three stage adapters.

    Subclasses set `task_class`, `config_prefix` (``isr``, ``charImage``,
    ``calibrate``: the field name in ``ProcessCcdConfig``), `outputs` (dataset
    types announced, first = the event's dataset type), `write_flags` (config
    fields forced True) and implement `run_task`.
    """

    task_class: ClassVar[Any] = None
    config_prefix: ClassVar[str] = ""
    outputs: ClassVar[tuple[str, ...]] = ()
    optional_outputs: ClassVar[tuple[str, ...]] = ()
    write_flags: ClassVar[tuple[str, ...]] = ()
    input_dataset: ClassVar[str] = ""

    def __init__(self, context: StageContext) -> None:
        super().__init__(context)
        self.stage = context.settings.stage
        self.output_dataset_type = self.outputs[0]
        self._lock = threading.Lock()
        self._configs: dict[str, Any] = {}
        self._butlers: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._tasks: dict[tuple[str, str], Any] = {}

    # -- configuration ---------------------------------------------------------------------------
    def make_config(self, camera: Any) -> Any:
        """Stage config for a camera: defaults, camera overrides, config file, write flags."""
        config = self.task_class.ConfigClass()
        apply_overrides(config, camera.stage_overrides(self.config_prefix))
        if self.context.settings.config_file:
            config.load(self.context.settings.config_file)
        for flag in self.write_flags:
            setattr(config, flag, True)
        config.validate()
        return config

    def config_for(self, camera: Any) -> Any:
        """The stage config of a camera (built once)."""
        key = getattr(camera, "name", str(camera))
        if key not in self._configs:
            config = self.make_config(camera)
            # hashed before any task sees it: a task may fill fields at run time
            self._configs[key] = (config, config_hash(config))
        return self._configs[key][0]

    def config_hash(self, event: Event) -> str:
        camera = self.butler_for(event).camera
        self.config_for(camera)
        return self._configs[getattr(camera, "name", str(camera))][1]

    # -- butler and task caches ------------------------------------------------------------------
    def butler_for(self, event: Event) -> Any:
        """Cached output Butler of the event's repository and collection."""
        from ..butler import Butler

        repo = self.context.repo_for(event)
        if not repo:
            raise PermanentError("event has no repository and the service has no --repo")
        key = (repo, self.context.collection_for(event))
        with self._lock:
            if key in self._butlers:
                self._butlers.move_to_end(key)
                metrics.CACHE_REQUESTS.labels(stage=self.stage, cache="butler", result="hit").inc()
                return self._butlers[key]
        metrics.CACHE_REQUESTS.labels(stage=self.stage, cache="butler", result="miss").inc()
        butler = Butler.for_output(self.context.output_root(event), repo, calib_cache_size=16)
        if isinstance(getattr(butler, "_calib_cache", None), OrderedDict):
            butler._calib_cache = CountingCache(self.stage, "calib", butler._calib_cache)
        metrics.CACHE_REQUESTS.labels(stage=self.stage, cache="camera", result="miss").inc()
        with self._lock:
            self._butlers[key] = butler
            while len(self._butlers) > 8:
                self._butlers.popitem(last=False)
        return butler

    def task_for(self, event: Event, butler: Any) -> Any:
        """Cached task for the event's repository (and its camera's config)."""
        key = (self.context.repo_for(event), self.context.collection_for(event))
        task = self._tasks.get(key)
        if task is None:
            task = self.make_task(self.config_for(butler.camera), butler)
            self._tasks[key] = task
        return task

    def make_task(self, config: Any, butler: Any) -> Any:
        """Construct the task (override to pass loaders)."""
        return self.task_class(config=config)

    def warm_up(self) -> None:
        """Open the service's default repository, camera and config before the first event."""
        settings = self.context.settings
        if not settings.repo or not any(storage.exists(storage.join(settings.repo, name))
                                        for name in ("_mapper", "repositoryCfg.yaml")):
            return
        from ..events import make_event

        probe = make_event("raw", {}, {}, stage="warmup", repo=settings.repo, collection=settings.collection)
        try:
            self.config_hash(probe)
        except Exception as exc:  # e.g. --repo is a prefix holding several repositories
            log.info("no warm-up for %s: %s", settings.repo, exc)

    # -- processing ------------------------------------------------------------------------------
    def check_inputs(self, event: Event) -> None:
        """Every input object exists and matches its checksum (permanent errors otherwise)."""
        for dtype, uri in event.uris.items():
            if not storage.exists(uri):
                raise FileNotFoundError(f"{uri}: no such object (input {dtype} of {event.data_id})")
            expected = event.checksums.get(dtype)
            if expected and expected.startswith("etag:"):
                actual = object_checksum(uri)
                if actual != expected:
                    raise PermanentError(f"{uri}: checksum {actual} differs from the event's {expected}")

    def data_ref(self, butler: Any, event: Event) -> Any:
        """The data reference of the event's CCD (registry refreshed once if it is new)."""
        from ..butler import NoResultsError

        try:
            return butler.dataRef("raw", dict(event.data_id))
        except NoResultsError:
            butler.refresh()
            return butler.dataRef("raw", dict(event.data_id))

    def run_task(self, task: Any, ref: Any) -> Any:
        """Run the task on the data reference (subclasses)."""
        raise NotImplementedError

    def quality(self, result: Any) -> dict[str, float | None] | None:
        """Quality summary of the result (final stage only)."""
        return None

    def process(self, event: Event) -> StageOutput:
        self.check_inputs(event)
        butler = self.butler_for(event)
        ref = self.data_ref(butler, event)
        task = self.task_for(event, butler)
        result = self.run_task(task, ref)
        uris: dict[str, str] = {}
        sums: dict[str, str] = {}
        for dtype in self.outputs + self.optional_outputs:
            if dtype in self.optional_outputs and not butler.exists(dtype, ref.dataId, write=True):
                continue
            uri = butler.get_uri(dtype, ref.dataId)
            uris[dtype] = uri
            sums[dtype] = object_checksum(uri)
        return StageOutput(uris=uris, checksums=sums, quality=self.quality(result), data_id=dict(ref.dataId))
