"""The isr streaming service: ``raw`` events -> `IsrTask` -> ``postISRCCD`` -> ``postisr`` events.

A thin adapter over `calexpress.streaming.butler_stage.ButlerStageProcessor`;
run it with ``calexpress serve isr``.
"""

from __future__ import annotations

from typing import Any

from calexpress.streaming.butler_stage import ButlerStageProcessor
from calexpress.streaming.service import StageContext

from .isrTask import IsrTask

__all__ = ["IsrStageProcessor", "make_processor"]


class IsrStageProcessor(ButlerStageProcessor):
    """Runs ``IsrTask.runDataRef`` (raw and calibrations from the repository, postISRCCD written)."""

    task_class = IsrTask
    config_prefix = "isr"
    outputs = ("postISRCCD",)
    write_flags = ("doWrite",)

    def run_task(self, task: Any, ref: Any) -> Any:
        return task.runDataRef(ref)


def make_processor(context: StageContext) -> IsrStageProcessor:
    """Factory used by ``calexpress serve isr``."""
    return IsrStageProcessor(context)
