"""Instrument signature removal: `IsrTask`, its algorithms, and master-calibration building."""

from .isrTask import IsrTask, IsrTaskConfig, apply_camera_overrides

__all__ = ["IsrTask", "IsrTaskConfig", "apply_camera_overrides"]
