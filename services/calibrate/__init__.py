"""calexpress.calibrate: CalibrateTask, reference catalogs, matcher, TAN-SIP fitter, PhotoCal, deblender."""

from .astrometry import AstrometryConfig, AstrometryTask
from .calibrate import CalibrateConfig, CalibrateTask
from .deblend import SourceDeblendConfig, SourceDeblendTask
from .matcher import MatcherFailure, MatchPatternConfig, MatchPatternTask
from .photocal import Colorterm, ColortermDict, ColortermLibrary, PhotoCalConfig, PhotoCalTask
from .refcat import LoadIndexedReferenceObjectsConfig, LoadIndexedReferenceObjectsTask, ReferenceCatalogError
from .wcs_fitter import FitTanSipWcsConfig, FitTanSipWcsTask

__all__ = [
    "AstrometryConfig",
    "AstrometryTask",
    "CalibrateConfig",
    "CalibrateTask",
    "Colorterm",
    "ColortermDict",
    "ColortermLibrary",
    "FitTanSipWcsConfig",
    "FitTanSipWcsTask",
    "LoadIndexedReferenceObjectsConfig",
    "LoadIndexedReferenceObjectsTask",
    "MatchPatternConfig",
    "MatchPatternTask",
    "MatcherFailure",
    "PhotoCalConfig",
    "PhotoCalTask",
    "ReferenceCatalogError",
    "SourceDeblendConfig",
    "SourceDeblendTask",
]
