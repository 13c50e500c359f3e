"""Master calibrations from raw frames: ``calexpress make-calibs bias|dark|flat REPO --id ...``.

Each input raw gets overscan correction, crosstalk, assembly and (for darks and flats) bias, linearity and
dark correction with `IsrTask`; the frames are combined pixel by pixel with a sigma-clipped mean:

- bias: ADU (assembled frame);
- dark: ADU per second of dark time;
- flat: electrons, each frame normalised by its median, the combination renormalised to a median of 1.

Optional illumination correction (``flat --illum-id``): the new flat is applied to flat-fielded sky
frames of several fields, `make_illumination_correction` measures the smooth ratio of the night sky to
the flat, and the ingested flat is the product of the two (``ILLUMCOR`` in its header names the inputs),
so that IsrTask's ``doFlat`` flattens the night sky rather than the twilight.

Optional defects: pixels of a master flat deviating by more than ``--defect-threshold`` from the local
level, and hot pixels of a master dark, become a ``defects`` product.

The masters are written as exposures (``IMAGE``, ``MASK``, ``VARIANCE``; primary header ``CALIBTYP``,
``FILTER``, ``DETECTOR``, ``CALIBDATE``, ``VALIDSTA``, ``VALIDEND``, ``INPUTS``) and ingested into the
repository's calib registry with their validity range, ready for `IsrTask.runDataRef`.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.time import Time
from calexpress.calibs import Defects
from calexpress.exposure import Exposure
from calexpress.stats import clipped_stats

from .illumination import make_illumination_correction
from .isrTask import IsrTask, IsrTaskConfig, apply_camera_overrides

__all__ = [
    "combine_frames",
    "defects_from_dark",
    "defects_from_flat",
    "make_bias",
    "make_calibs",
    "make_dark",
    "make_flat",
    "make_illuminated_flat",
    "register_cli",
]

log = logging.getLogger("calexpress.makecalibs")


# --------------------------------------------------------------------------------------------------
# combination


def combine_frames(
    images: Sequence[np.ndarray], nsigma: float = 3.0, chunk_rows: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Sigma-clipped mean of a stack of images, pixel by pixel.

    Deviations from the per-pixel median larger than ``nsigma`` times the robust scatter of all the
    deviations in a band of ``chunk_rows`` rows are rejected.

    Returns
    -------
    mean : `numpy.ndarray`
        float32 combined image.
    variance : `numpy.ndarray`
        float32 variance of the mean (scatter^2 / number of frames kept).
    """
    n = len(images)
    if n == 0:
        raise ValueError("no frames to combine")
    shape = images[0].shape
    if any(im.shape != shape for im in images):
        raise ValueError("frames to combine differ in shape")
    out = np.empty(shape, dtype=np.float32)
    var = np.empty(shape, dtype=np.float32)
    for y0 in range(0, shape[0], chunk_rows):
        stack = np.stack([im[y0 : y0 + chunk_rows] for im in images]).astype(np.float32)
        if n < 3:
            out[y0 : y0 + chunk_rows] = stack.mean(axis=0)
            var[y0 : y0 + chunk_rows] = stack.var(axis=0) / n if n > 1 else 0.0
            continue
        med = np.median(stack, axis=0)
        dev = stack - med
        finite = np.isfinite(dev)
        sub = dev[finite][:: max(1, dev.size // 200_000)]
        sigma = 1.4826 * float(np.median(np.abs(sub))) * math.sqrt(n / max(n - 1.0, 1.0)) if sub.size else 0.0
        keep = finite & (np.abs(dev) <= nsigma * max(sigma, 1e-12))
        nkeep = keep.sum(axis=0)
        total = np.where(keep, stack, 0.0).sum(axis=0)
        mean = np.where(nkeep > 0, total / np.maximum(nkeep, 1), med)
        out[y0 : y0 + chunk_rows] = mean
        var[y0 : y0 + chunk_rows] = sigma * sigma / np.maximum(nkeep, 1)
    return out, var


# --------------------------------------------------------------------------------------------------
# per-frame processing


def _calib_isr_config(camera, **steps: Any) -> IsrTaskConfig:
    cfg = IsrTaskConfig()
    if camera is not None:
        apply_camera_overrides(cfg, camera)
    cfg.doBias = cfg.doDark = cfg.doFlat = False
    cfg.doDefect = cfg.doInterpolate = cfg.doSetBadRegions = cfg.doVignette = False
    cfg.doWidenSaturationTrails = False
    cfg.doMeasureBackground = False
    cfg.doWrite = False
    cfg.expectWcs = False
    for key, value in steps.items():
        setattr(cfg, key, value)
    return cfg


def _to_adu(exposure: Exposure) -> None:
    """Convert an IsrTask output (electrons) back to ADU per amplifier, in place."""
    for amp in exposure.detector.amplifiers:
        g = amp.gain if math.isfinite(amp.gain) and amp.gain > 0 else 1.0
        exposure.image[amp.bbox.slices] /= np.float32(g)
        exposure.variance[amp.bbox.slices] /= np.float32(g * g)


def _master(
    image: np.ndarray,
    variance: np.ndarray,
    template: Exposure,
    calib_type: str,
    inputs: list[Any],
    filt: str | None,
    dates: list[Time],
    unit: str,
) -> Exposure:
    md = fits.Header()
    md["CALIBTYP"] = (calib_type, "calibration type")
    md["OBSTYPE"] = calib_type
    det = template.detector
    md["DETECTOR"] = (int(det.id), "detector id")
    md["DETNAME"] = det.name
    md["FILTER"] = filt if filt else "NONE"
    md["BUNIT"] = unit
    md["NINPUT"] = (len(inputs), "number of input exposures")
    md["INPUTS"] = ",".join(str(i) for i in inputs)[:68]
    if dates:
        mid = Time(np.mean([d.tai.mjd for d in dates]), format="mjd", scale="tai")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", fits.verify.VerifyWarning)
            md["CALIBDATE"] = (mid.isot[:19], "mean input date (TAI)")
        md["DATE-OBS"] = mid.isot[:19]
    for key in ("INSTRUME", "TELESCOP"):
        if template.metadata is not None and key in template.metadata:
            md[key] = template.metadata[key]
    mask = np.zeros(image.shape, np.int32)
    bad = ~np.isfinite(image)
    if bad.any():
        mask[bad] = 1 << template.mask_planes.get("BAD", 0)
        image = np.where(bad, np.float32(0.0), image)
    return Exposure(
        image, mask, variance, mask_planes=dict(template.mask_planes), metadata=md, detector=det, filter=filt
    )


def _dates(raws: Sequence[Exposure]) -> list[Time]:
    return [r.visit_info.date for r in raws if r.visit_info is not None and r.visit_info.date is not None]


def _exp_id(raw: Exposure, i: int) -> Any:
    if raw.visit_info is not None and raw.visit_info.exposure_id is not None:
        return raw.visit_info.exposure_id
    return i


def make_bias(raws: Sequence[Exposure], camera=None, nsigma: float = 3.0) -> Exposure:
    """Master bias [ADU] from raw bias frames (overscan, crosstalk, assembly; clipped mean)."""
    task = IsrTask(config=_calib_isr_config(camera, doLinearize=False))
    frames, ids, dates = [], [], _dates(raws)
    template = None
    for i, raw in enumerate(raws):
        exp = task.run(raw, camera=camera).exposure
        _to_adu(exp)
        frames.append(exp.image)
        ids.append(_exp_id(raw, i))
        template = exp
    image, var = combine_frames(frames, nsigma)
    return _master(image, var, template, "bias", ids, None, dates, "adu")


def make_dark(raws: Sequence[Exposure], bias, camera=None, nsigma: float = 3.0) -> Exposure:
    """Master dark [ADU per second of dark time] from raw darks (bias-subtracted, linearised)."""
    task = IsrTask(config=_calib_isr_config(camera, doBias=bias is not None))
    frames, ids, dates = [], [], _dates(raws)
    template = None
    for i, raw in enumerate(raws):
        dt = raw.visit_info.dark_time if raw.visit_info is not None else float("nan")
        if not (math.isfinite(dt) and dt > 0):
            raise ValueError(f"dark frame {_exp_id(raw, i)} has no positive dark time")
        exp = task.run(raw, bias=bias, camera=camera).exposure
        _to_adu(exp)
        exp.image /= np.float32(dt)
        frames.append(exp.image)
        ids.append(_exp_id(raw, i))
        template = exp
    image, var = combine_frames(frames, nsigma)
    master = _master(image, var, template, "dark", ids, None, dates, "adu/s")
    master.metadata["DARKTIME"] = (1.0, "the master is per second of dark time")
    master.metadata["EXPTIME"] = 1.0
    return master


def make_flat(raws: Sequence[Exposure], bias=None, dark=None, camera=None, nsigma: float = 3.0) -> Exposure:
    """Master flat (median 1) from raw flats: bias, dark, linearity, gain; each frame normalised."""
    task = IsrTask(config=_calib_isr_config(camera, doBias=bias is not None, doDark=dark is not None))
    frames, ids, dates = [], [], _dates(raws)
    template = None
    filt = None
    for i, raw in enumerate(raws):
        exp = task.run(raw, bias=bias, dark=dark, camera=camera).exposure
        level = float(np.nanmedian(exp.image[::4, ::4]))
        if not (math.isfinite(level) and level > 0):
            raise ValueError(f"flat frame {_exp_id(raw, i)} has median {level}: not a flat")
        exp.image /= np.float32(level)
        frames.append(exp.image)
        ids.append(_exp_id(raw, i))
        template = exp
        filt = filt or exp.filter
    image, var = combine_frames(frames, nsigma)
    norm = float(np.nanmedian(image))
    image /= np.float32(norm)
    var /= np.float32(norm * norm)
    return _master(image, var, template, "flat", ids, filt, dates, "")


def make_illuminated_flat(
    flat: Exposure,
    sky_raws: Sequence[Exposure],
    bias=None,
    dark=None,
    camera=None,
    bin_size: int = 32,
    defects: Defects | None = None,
) -> tuple[Exposure, Exposure]:
    """Multiply a master flat by the illumination correction measured on sky frames.

    Parameters
    ----------
    flat : `Exposure`
        Master flat (median 1), e.g. from twilight frames.
    sky_raws : sequence of `Exposure`
        Raw science frames of several fields in the flat's filter (at least 2; stars and galaxies are
        masked, and the median over fields rejects what the mask misses).
    bias, dark : optional
        Master bias and dark for their ISR.
    bin_size : `int`
        Cell size of the correction (`make_illumination_correction`).
    defects : `Defects`, optional
        Defects masked in the sky frames (the camera's static defects are always added).

    Returns
    -------
    flat : `Exposure`
        ``flat * illum`` renormalised to median 1 (variance scaled alike), header ``ILLUMCOR``, ``ILLUMN``.
    illum : `Exposure`
        The correction itself.
    """
    cfg = IsrTaskConfig()
    if camera is not None:
        apply_camera_overrides(cfg, camera)  # the sky frames get the camera's science ISR
    cfg.doBias, cfg.doDark, cfg.doFlat = bias is not None, dark is not None, True
    cfg.doWrite = cfg.expectWcs = False
    task = IsrTask(config=cfg)
    frames, ids = [], []
    for i, raw in enumerate(sky_raws):
        if flat.filter and raw.filter and raw.filter != flat.filter:
            raise ValueError(f"sky frame {_exp_id(raw, i)} has filter {raw.filter}, the flat {flat.filter}")
        frames.append(task.run(raw, bias=bias, dark=dark, flat=flat, defects=defects, camera=camera).exposure)
        ids.append(_exp_id(raw, i))
    illum = make_illumination_correction(frames, bin_size=bin_size)
    image = flat.image * illum.image
    norm = float(np.nanmedian(image))
    out = flat.clone()
    out.image = (image / norm).astype(np.float32)
    out.variance = (flat.variance * (illum.image / norm) ** 2).astype(np.float32)
    out.metadata["ILLUMCOR"] = (",".join(str(i) for i in ids)[:68], "sky frames of the illumination corr.")
    out.metadata["ILLUMN"] = (len(ids), "number of sky frames of the illumination corr.")
    illum.metadata["CALIBTYP"] = "illumcor"
    illum.metadata["INPUTS"] = out.metadata["ILLUMCOR"]
    return out, illum


def defects_from_flat(flat: Exposure | np.ndarray, threshold: float = 0.2, box: int = 15) -> Defects:
    """Pixels whose flat response deviates from the local median by more than ``threshold`` (fraction).

    The local level is the median over a ``5 x box`` window (long along rows, so that bad columns stand out).
    """
    from scipy.ndimage import median_filter

    img = flat.image if isinstance(flat, Exposure) else np.asarray(flat)
    img = np.where(np.isfinite(img), img, 0.0).astype(np.float32)
    local = median_filter(img, size=(5, box), mode="nearest")
    with np.errstate(divide="ignore", invalid="ignore"):
        bad = ~(np.abs(img / local - 1.0) <= threshold)
    return Defects.from_mask(bad)


def defects_from_dark(dark: Exposure | np.ndarray, nsigma: float = 10.0) -> Defects:
    """Hot pixels of a master dark: more than ``nsigma`` clipped sigmas above the clipped mean."""
    img = dark.image if isinstance(dark, Exposure) else np.asarray(dark)
    mean, sigma, _ = clipped_stats(img[::2, ::2])
    return Defects.from_mask(img > mean + nsigma * sigma)


# --------------------------------------------------------------------------------------------------
# repository layer


def _iso(t: Time | None) -> str | None:
    return None if t is None else t.tai.isot[:19]


def make_calibs(
    repo: str,
    calib_type: str,
    data_ids: list[Mapping[str, Any]] | None = None,
    *,
    output: str | None = None,
    valid_start: str | None = None,
    valid_end: str | None = None,
    nsigma: float = 3.0,
    make_defects: bool = False,
    defect_threshold: float = 0.2,
    calib_repo: str | None = None,
    illum_ids: list[Mapping[str, Any]] | None = None,
    illum_bin_size: int = 32,
) -> dict[str, str]:
    """Build a master calibration from the raws of ``repo`` and ingest it.

    Parameters
    ----------
    repo : `str`
        Input repository (with ``raw`` registered).
    calib_type : `str`
        ``bias``, ``dark`` or ``flat``.
    data_ids : `list` [`dict`]
        The raws to combine (partial IDs are completed from the registry); all raws if None.  Raws of
        several detectors (or filters, for flats) make one master each.
    output : `str`, optional
        Where to ingest the master (default: ``calib_repo`` or ``repo``).
    valid_start, valid_end : `str`, optional
        Validity range (ISO dates, TAI).  Default: open range.
    make_defects : `bool`
        Also derive and ingest ``defects`` from the flat (or hot pixels from the dark).
    illum_ids : `list` [`dict`], optional
        Flats only: science raws (several fields, same filter) from which an illumination correction is
        measured and multiplied into the flat (`make_illuminated_flat`).
    illum_bin_size : `int`
        Cell size of the illumination correction, pixels.

    Returns
    -------
    paths : `dict`
        ``"<type>_<detector>[_<filter>]"`` -> path of each master written.
    """
    from calexpress.butler import Butler
    from calexpress.ingest import ingest_calibs

    if calib_type not in ("bias", "dark", "flat"):
        raise ValueError(f"make-calibs makes bias, dark or flat, not {calib_type!r}")
    if illum_ids and calib_type != "flat":
        raise ValueError("--illum-id applies to flats only")
    butler = Butler(repo, calib_root=calib_repo) if calib_repo else Butler(repo)
    camera = butler.camera
    ids: list[dict] = []
    for did in data_ids or [{}]:
        ids.extend(butler.query_data_ids("raw", **dict(did)))
    if not ids:
        raise ValueError(f"{repo}: no raw matches {data_ids}")
    groups: dict[tuple, list[dict]] = {}
    for did in ids:
        det = did.get("ccd", did.get("detector"))
        filt = did.get("filter") if calib_type == "flat" else None
        groups.setdefault((det, filt), []).append(did)
    dest = output or calib_repo or repo
    written: dict[str, str] = {}
    for (det, filt), group in sorted(groups.items(), key=lambda kv: str(kv[0])):
        raws = [butler.get("raw", did) for did in group]
        for did, raw in zip(group, raws):
            obs_type = getattr(raw.visit_info, "obs_type", None)
            if obs_type and obs_type != calib_type:
                log.warning("%s: raw %s has observation type %r", calib_type, did, obs_type)
        log.info("%s: combining %d raws for detector %s filter %s", calib_type, len(raws), det, filt)
        first = group[0]
        bias = dark = None
        cfg = apply_camera_overrides(IsrTaskConfig(), camera)
        if calib_type in ("dark", "flat") and cfg.doBias:
            bias = butler.get_calib("bias", first)
        if calib_type == "flat" and cfg.doDark:
            try:
                dark = butler.get_calib("dark", first)
            except LookupError:
                log.warning("no dark for %s: flat made without dark subtraction", first)
        if calib_type == "bias":
            master = make_bias(raws, camera, nsigma)
        elif calib_type == "dark":
            master = make_dark(raws, bias, camera, nsigma)
        else:
            master = make_flat(raws, bias, dark, camera, nsigma)
            if illum_ids:
                sky_ids: list[dict] = []
                for sid in illum_ids:
                    sky_ids.extend(butler.query_data_ids("raw", **dict(sid)))
                sky_ids = [s for s in sky_ids if s.get("ccd", s.get("detector")) == det
                           and (filt is None or s.get("filter") in (None, filt))]
                if len(sky_ids) < 2:
                    raise ValueError(f"--illum-id matches {len(sky_ids)} raws of detector {det} filter "
                                     f"{filt}: an illumination correction needs at least 2")
                log.info("flat: illumination correction from %d sky frames", len(sky_ids))
                try:
                    defects_calib = butler.get_calib("defects", first)
                except LookupError:
                    defects_calib = None
                master, _ = make_illuminated_flat(
                    master, [butler.get("raw", s) for s in sky_ids], bias, dark, camera, illum_bin_size,
                    defects=defects_calib,
                )
        if valid_start:
            master.metadata["VALIDSTA"] = valid_start
        if valid_end:
            master.metadata["VALIDEND"] = valid_end
        name = f"{calib_type}_det{det}" + (f"_{filt}" if filt else "")
        products = [(calib_type, master, name)]
        if make_defects and calib_type in ("flat", "dark"):
            defects = (
                defects_from_flat(master, defect_threshold)
                if calib_type == "flat"
                else defects_from_dark(master)
            )
            defects.metadata["CALIBTYP"] = "defects"
            defects.metadata["DETECTOR"] = int(master.metadata["DETECTOR"])
            if "CALIBDATE" in master.metadata:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", fits.verify.VerifyWarning)
                    defects.metadata["CALIBDATE"] = master.metadata["CALIBDATE"]
            products.append(("defects", defects, f"defects_det{det}"))
        with tempfile.TemporaryDirectory(prefix="calexpress-makecalibs-") as tmp:
            for ctype, obj, stem in products:
                path = os.path.join(tmp, stem + ".fits")
                obj.write(path)
                result = ingest_calibs(
                    dest,
                    [path],
                    calib_type=ctype,
                    filter=filt if ctype == "flat" else None,
                    detector=int(det) if det is not None else None,
                    valid_start=valid_start,
                    valid_end=valid_end,
                    mode="copy",
                )
                if result.failed:
                    raise RuntimeError(f"ingest of {stem} failed: {'; '.join(map(str, result.failed))}")
                rows = result.ingested
                written[stem] = str(rows[0].get("path", path)) if rows else path
                log.info("wrote %s (%s)", stem, written[stem])
    return written


def _run(args: argparse.Namespace) -> int:
    from calexpress.dataids import expand_id_tokens

    data_ids = []
    for tokens in args.id or []:
        data_ids.extend(expand_id_tokens(tokens) if tokens else [{}])
    if args.id is not None and not data_ids:
        data_ids = [{}]
    illum_ids = []
    for tokens in args.illum_id or []:
        illum_ids.extend(expand_id_tokens(tokens) if tokens else [{}])
    try:
        written = make_calibs(
            args.repo,
            args.calib_type,
            data_ids or None,
            output=args.output,
            valid_start=args.valid_start,
            valid_end=args.valid_end,
            nsigma=args.nsigma,
            make_defects=args.defects,
            defect_threshold=args.defect_threshold,
            calib_repo=args.calib,
            illum_ids=illum_ids or None,
            illum_bin_size=args.illum_bin_size,
        )
    except Exception as exc:  # noqa: BLE001 - one line to the user, non-zero exit
        print(f"make-calibs {args.calib_type} {args.repo}: {exc}")
        return 1
    for stem, path in written.items():
        print(f"{stem}: {path}")
    return 0


def register_cli(subparsers: Any) -> None:
    """Add ``make-calibs`` to the ``calexpress`` command (``func(args) -> exit status``)."""
    p = subparsers.add_parser(
        "make-calibs",
        help="build master bias/dark/flat from raws and ingest them",
        description="Build a master calibration (sigma-clipped combination of ISR-processed raws) and "
        "ingest it into the calib registry with its validity range.",
    )
    p.add_argument("calib_type", choices=("bias", "dark", "flat"), metavar="bias|dark|flat")
    p.add_argument("repo", metavar="REPO", help="repository with the raws")
    p.add_argument(
        "--id",
        nargs="*",
        action="append",
        metavar="KEY=VALUE",
        help="raws to combine (processCcd.py --id syntax: ^ alternatives, a..b ranges)",
    )
    p.add_argument("--output", default=None, help="repository to ingest into (default: REPO or --calib)")
    p.add_argument("--calib", default=None, help="calibration repository (default: REPO)")
    p.add_argument("--valid-start", dest="valid_start", default=None, help="ISO date (TAI); default open")
    p.add_argument("--valid-end", dest="valid_end", default=None, help="ISO date (TAI); default open")
    p.add_argument("--nsigma", type=float, default=3.0, help="clipping threshold of the combination")
    p.add_argument(
        "--defects",
        action="store_true",
        help="also derive defects from the master flat (or hot pixels from the master dark)",
    )
    p.add_argument(
        "--defect-threshold",
        dest="defect_threshold",
        type=float,
        default=0.2,
        help="flat deviation (fraction) that makes a pixel a defect",
    )
    p.add_argument(
        "--illum-id",
        dest="illum_id",
        nargs="*",
        action="append",
        metavar="KEY=VALUE",
        help="flat only: science raws of several fields whose night sky corrects the flat's illumination",
    )
    p.add_argument(
        "--illum-bin-size",
        dest="illum_bin_size",
        type=int,
        default=32,
        help="cell size (pixels) of the illumination correction",
    )
    p.set_defaults(func=_run)
