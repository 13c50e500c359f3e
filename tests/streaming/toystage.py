"""A small real stage for testing the streaming framework without the science stages.

It reads the input FITS object named by the event, fails permanently on a
bad FITS file (as the real stages do), computes the clipped mean of the image,
and writes a FITS output per dataset type of its stage under the output
collection.  ``TOY_SLEEP_<STAGE>`` (seconds) adds CPU-like time so tests can
kill a service in the middle of a CCD.
"""

from __future__ import annotations

import gzip
import io
import os
import time

import numpy as np
from astropy.io import fits
from calexpress import storage
from calexpress.config import Config, Field, config_hash
from calexpress.events import event_key
from calexpress.streaming.service import STAGES, PermanentError, StageOutput, StageProcessor, object_checksum

OUTPUTS = {"isr": ["postISRCCD"], "characterize": ["icExp", "icSrc"], "calibrate": ["calexp", "src"]}


class ToyConfig(Config):
    scale = Field(dtype=float, default=1.0, doc="factor applied to the pixels")


class ToyProcessor(StageProcessor):
    def __init__(self, context):
        super().__init__(context)
        self.stage = context.settings.stage
        self.output_dataset_type = STAGES[self.stage][2]
        self.config = ToyConfig()
        self.sleep = float(os.environ.get(f"TOY_SLEEP_{self.stage.upper()}", "0"))

    def config_hash(self, event) -> str:
        return config_hash(self.config)

    def process(self, event):
        uri = next(iter(event.uris.values()))
        data = storage.read_bytes(uri)  # FileNotFoundError for a missing object: permanent
        try:
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            with fits.open(io.BytesIO(data)) as hdul:
                hdu = next(h for h in hdul if h.is_image and h.data is not None)
                image = np.asarray(hdu.data, dtype=np.float32) * self.config.scale
        except (OSError, EOFError, ValueError, TypeError, StopIteration) as exc:
            raise PermanentError(f"{uri}: bad FITS file: {exc}") from None
        if self.sleep:
            t_end = time.monotonic() + self.sleep
            while time.monotonic() < t_end:
                np.sum(image[:64])
        root = self.context.output_root(event)
        name = event_key(event.data_id, event.instrument).decode().replace("/", "_")
        uris, sums = {}, {}
        for dtype in OUTPUTS[self.stage]:
            target = storage.join(root, dtype, f"{name}.fits")
            hdu = fits.PrimaryHDU(image[:256, :256])
            hdu.header["STAGE"] = self.stage
            hdu.header["MEAN"] = float(np.nanmean(image))
            buf = io.BytesIO()
            hdu.writeto(buf)
            storage.atomic_write(target, buf.getvalue())
            uris[dtype] = target
            sums[dtype] = object_checksum(target)
        quality = None
        if self.stage == "calibrate":
            quality = {"psf_fwhm_arcsec": 1.0, "zero_point": 27.0, "astrometric_rms_mas": 30.0,
                       "limiting_mag": float(np.nanmean(image)) % 30}
        return StageOutput(uris=uris, checksums=sums, quality=quality)


def make_processor(context):
    return ToyProcessor(context)
