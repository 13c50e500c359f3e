"""calexpress: raw CCD frames to calibrated exposures and source catalogs.

The core library: exposure model, FITS I/O, data repository, cameras, config
and task base, events, storage, metrics, and the detection and measurement code
used by several stages.  The stages live in ``calexpress.isr``,
``calexpress.characterize`` and ``calexpress.calibrate``; ``ProcessCcdTask``
and the command lines in ``calexpress.pipeline``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Butler", "Exposure", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from .butler import Butler
    from .exposure import Exposure


def __getattr__(name: str) -> Any:
    # Lazy imports keep ``import calexpress`` cheap for the command lines.
    if name == "Butler":
        from .butler import Butler

        return Butler
    if name == "Exposure":
        from .exposure import Exposure

        return Exposure
    raise AttributeError(name)
