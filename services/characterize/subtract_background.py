"""SubtractBackgroundTask (LSST ``meas_algorithms.SubtractBackgroundTask`` names and defaults, ``2.2``)."""

from __future__ import annotations

import numpy as np
from calexpress.background import BackgroundList, estimate_background
from calexpress.config import ChoiceField, Config, Field, ListField
from calexpress.task import Struct, Task, timeMethod

__all__ = ["SubtractBackgroundConfig", "SubtractBackgroundTask"]


class SubtractBackgroundConfig(Config):
    """Background model configuration (LSST names)."""

    binSize = Field(dtype=int, default=128, doc="Cell size (pixels)")
    binSizeX = Field(dtype=int, default=0, doc="Cell size in x; 0 = binSize")
    binSizeY = Field(dtype=int, default=0, doc="Cell size in y; 0 = binSize")
    statisticsProperty = ChoiceField(
        dtype=str,
        default="MEANCLIP",
        doc="Cell statistic",
        allowed={"MEANCLIP": "clipped mean", "MEAN": "mean", "MEDIAN": "median"},
    )
    ignoredPixelMask = ListField(
        dtype=str,
        default=["BAD", "EDGE", "DETECTED", "DETECTED_NEGATIVE", "NO_DATA"],
        doc="Mask planes ignored",
    )
    useApprox = Field(dtype=bool, default=True, doc="Chebyshev approximation (else Akima spline)")
    approxOrderX = Field(dtype=int, default=6, doc="Chebyshev order")
    approxOrderY = Field(dtype=int, default=-1, doc="Chebyshev order in y; -1 = approxOrderX")
    weighting = Field(dtype=bool, default=True, doc="Inverse-variance weighting of the approximation")
    algorithm = Field(dtype=str, default="AKIMA_SPLINE", doc="Interpolation when useApprox is False")
    undersampleStyle = Field(dtype=str, default="REDUCE_INTERP_ORDER", doc="What to do with too few cells")


class SubtractBackgroundTask(Task):
    """Estimate the sky with binned clipped statistics + a smooth model and subtract it."""

    ConfigClass = SubtractBackgroundConfig
    _DefaultName = "background"

    @timeMethod
    def run(self, exposure, background: BackgroundList | None = None, stats: bool = True) -> Struct:
        """Subtract the background from ``exposure`` in place and append it to ``background``.

        Adds ``BGMEAN`` and ``BGVAR`` to ``exposure.metadata``.  Returns `Struct` with ``background``
        (the list).
        """
        cfg = self.config
        if background is None:
            background = BackgroundList()
        planes = [p for p in cfg.ignoredPixelMask if p in exposure.mask_planes]
        bits = exposure.get_plane_bitmask(*planes) if planes else 0
        bx = cfg.binSizeX or cfg.binSize
        by = cfg.binSizeY or cfg.binSize
        comp = estimate_background(
            exposure.image,
            exposure.mask,
            bits,
            bin_size=bx,
            bin_size_y=by,
            stat=cfg.statisticsProperty,
            order=cfg.approxOrderX,
            approx="chebyshev" if cfg.useApprox else "spline",
            weighting=cfg.weighting,
        )
        model = comp.get_image(exposure.shape).astype(np.float32)
        exposure.image -= model
        background.append(comp)
        if stats:
            total = model if len(background) == 1 else background.get_image(exposure.shape)
            exposure.metadata.append(
                ("BGMEAN", float(np.mean(total)), "mean of the background model"), end=True
            )
            exposure.metadata.append(
                ("BGVAR", float(np.var(total)), "variance of the background model"), end=True
            )
        return Struct(background=background, component=comp)
