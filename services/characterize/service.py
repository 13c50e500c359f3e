"""The characterize streaming service: ``postisr`` events -> `CharacterizeImageTask` -> ``characterized``.

Reads ``postISRCCD``; writes ``icExp``, ``icSrc`` and ``icExpBackground`` (what the calibrate service
reads), whatever ``doWriteExposure`` says in the processCcd defaults.  Run it with
``calexpress serve characterize``.
"""

from __future__ import annotations

from typing import Any

from calexpress.streaming.butler_stage import ButlerStageProcessor
from calexpress.streaming.service import StageContext

from .characterizeImage import CharacterizeImageTask

__all__ = ["CharacterizeStageProcessor", "make_processor"]


class CharacterizeStageProcessor(ButlerStageProcessor):
    """Runs ``CharacterizeImageTask.runDataRef`` on the postISRCCD of the event."""

    task_class = CharacterizeImageTask
    config_prefix = "charImage"
    outputs = ("icExp", "icSrc", "icExpBackground")
    write_flags = ("doWrite", "doWriteExposure")

    def run_task(self, task: Any, ref: Any) -> Any:
        return task.runDataRef(ref, doUnpersist=True)


def make_processor(context: StageContext) -> CharacterizeStageProcessor:
    """Factory used by ``calexpress serve characterize``."""
    return CharacterizeStageProcessor(context)
