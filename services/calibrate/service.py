"""The calibrate streaming service: ``characterized`` -> `CalibrateTask` -> ``calexp`` events.

Reads ``icExp``, ``icExpBackground``, ``icSrc``; writes ``calexp``,
``calexpBackground``, ``src`` and ``srcMatch``.  The final event carries the
per-CCD quality summary (PSF FWHM, zero point, astrometric RMS, limiting
magnitude from the calexp metadata).  Run it with ``calexpress serve calibrate``.
"""

from __future__ import annotations

from typing import Any

from calexpress.streaming.butler_stage import ButlerStageProcessor, CountingCache, quality_from_metadata
from calexpress.streaming.service import StageContext

from .calibrate import CalibrateTask

__all__ = ["CalibrateStageProcessor", "make_processor"]


class CalibrateStageProcessor(ButlerStageProcessor):
    """Runs ``CalibrateTask.runDataRef``; the reference-catalog loader (and its shard cache) is reused."""

    task_class = CalibrateTask
    config_prefix = "calibrate"
    outputs = ("calexp", "src", "calexpBackground")
    optional_outputs = ("srcMatch",)
    write_flags = ("doWrite", "doWriteExposure")

    def make_task(self, config: Any, butler: Any) -> Any:
        task = CalibrateTask(butler=butler, config=config)
        for loader in {id(x): x for x in (task.astromRefObjLoader, task.photoRefObjLoader) if x}.values():
            if hasattr(loader, "_cache") and not isinstance(loader._cache, CountingCache):
                loader._cache = CountingCache(self.stage, "refcat", loader._cache)
        return task

    def run_task(self, task: Any, ref: Any) -> Any:
        return task.runDataRef(ref, doUnpersist=True)

    def quality(self, result: Any) -> dict[str, float | None]:
        return quality_from_metadata(getattr(result.exposure, "metadata", None))


def make_processor(context: StageContext) -> CalibrateStageProcessor:
    """Factory used by ``calexpress serve calibrate``."""
    return CalibrateStageProcessor(context)
