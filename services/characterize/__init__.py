"""calexpress.characterize: CharacterizeImageTask and its algorithms (PSF, stars, cosmic rays, ap. corr.)."""

from .apcorr import ApplyApCorrConfig, ApplyApCorrTask, MeasureApCorrConfig, MeasureApCorrTask
from .characterizeImage import CharacterizeImageConfig, CharacterizeImageTask
from .cosmic_rays import FindCosmicRaysConfig, RepairConfig, RepairTask
from .measure_psf import MeasurePsfConfig, MeasurePsfTask
from .psf_determiner import PsfexPsfDeterminerConfig
from .star_selector import ObjectSizeStarSelectorConfig, ObjectSizeStarSelectorTask
from .subtract_background import SubtractBackgroundConfig, SubtractBackgroundTask

__all__ = [
    "ApplyApCorrConfig",
    "ApplyApCorrTask",
    "CharacterizeImageConfig",
    "CharacterizeImageTask",
    "FindCosmicRaysConfig",
    "MeasureApCorrConfig",
    "MeasureApCorrTask",
    "MeasurePsfConfig",
    "MeasurePsfTask",
    "ObjectSizeStarSelectorConfig",
    "ObjectSizeStarSelectorTask",
    "PsfexPsfDeterminerConfig",
    "RepairConfig",
    "RepairTask",
    "SubtractBackgroundConfig",
    "SubtractBackgroundTask",
]
