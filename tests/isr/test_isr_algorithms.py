"""ISR building blocks on synthetic arrays: overscan fits, crosstalk, assembly, masks, interpolation."""

from __future__ import annotations

import numpy as np
import pytest
from calexpress.camera import Camera
from calexpress.exposure import Exposure
from calexpress.isr import IsrTask, IsrTaskConfig
from calexpress.isr import isrFunctions as fn
from calexpress.isr.overscan import OverscanConfig, fit_overscan


def _ov_config(fit_type, order=1):
    c = OverscanConfig()
    c.fitType = fit_type
    c.order = order
    return c


def test_overscan_fit_types():
    rng = np.random.default_rng(1)
    rows = np.arange(2000)
    truth = 1000.0 + 5.0 * (rows / 2000.0) ** 2
    ov = (truth[:, None] + rng.normal(0, 3.0, (2000, 20))).astype(np.float32)
    ov[100, 3] = 60000.0  # a hot pixel
    med = fit_overscan(ov, _ov_config("MEDIAN"))
    assert med[0].shape == (2000,) and np.all(med[0] == med[1]) and med[1] == np.round(med[1])
    assert med[2] == pytest.approx(3.0, rel=0.1) or med[2] > 3.0  # noise about a constant includes the trend
    for fit_type, tol in (("MEDIAN_PER_ROW", 1.0), ("POLY", 0.1), ("CHEB", 0.1), ("LEG", 0.1)):
        model, level, noise = fit_overscan(ov, _ov_config(fit_type, order=2))
        assert np.sqrt(np.mean((model - truth) ** 2)) < tol, fit_type  # per-row medians of 20 px: ~0.8
        assert noise == pytest.approx(3.0, rel=0.1), fit_type
    mean, _, _ = fit_overscan(ov, _ov_config("MEANCLIP"))
    assert mean[0] == pytest.approx(truth.mean(), abs=0.1)
    with pytest.raises(Exception):  # noqa: B017 - pex_config refuses an unknown fit type
        _ov_config("SPLINE")


def test_crosstalk_and_flips():
    rng = np.random.default_rng(2)
    a = rng.uniform(0, 1000, (6, 5)).astype(np.float32)
    b = rng.uniform(0, 1000, (6, 5)).astype(np.float32)
    coeffs = np.array([[0.0, 1e-3], [2e-3, 0.0]])
    img = np.zeros((6, 12), np.float32)
    img[:, 0:5] = a + coeffs[0, 1] * b
    img[:, 7:12] = b + coeffs[1, 0] * a
    from calexpress.geom import Box

    fn.crosstalk_correct(img, [Box(0, 0, 5, 6), Box(7, 0, 5, 6)], coeffs)
    assert np.allclose(img[:, 0:5], a, atol=1e-3) and np.allclose(img[:, 7:12], b, atol=1e-3)
    # after assembly amp 2 is x-flipped: readout column c sits at x = x1 - 1 - c
    img = np.zeros((6, 10), np.float32)
    img[:, 0:5] = a + coeffs[0, 1] * b
    img[:, 5:10] = (b + coeffs[1, 0] * a)[:, ::-1]
    fn.crosstalk_correct(img, [Box(0, 0, 5, 6), Box(5, 0, 5, 6)], coeffs, [False, True])
    assert np.allclose(img[:, 0:5], a, atol=1e-3) and np.allclose(img[:, 5:10], b[:, ::-1], atol=1e-3)


def test_widen_grow_interpolate():
    mask = np.zeros((3, 40), np.int32)
    mask[0, 10:20] = 2  # width 10 -> +4 each side
    mask[1, 5:11] = 2  # width 6 -> +1
    mask[2, 30:33] = 2  # width 3 -> 0
    fn.widen_saturation_trails(mask, 2)
    assert np.flatnonzero(mask[0]).tolist() == list(range(6, 24))
    assert np.flatnonzero(mask[1]).tolist() == list(range(4, 12))
    assert np.flatnonzero(mask[2]).tolist() == [30, 31, 32]
    m = np.zeros((5, 5), np.int32)
    m[2, 2] = 2
    fn.grow_mask_cross(m, 2, 1)
    assert (m != 0).sum() == 5 and m[1, 2] and m[2, 1] and not m[1, 1]
    img = np.tile(np.arange(20, dtype=np.float32) * 2.0, (2, 1))
    mask = np.zeros(img.shape, np.int32)
    mask[0, 5:8] = 1
    mask[1, 0:3] = 1
    img[mask != 0] = np.nan
    n = fn.interpolate_over_mask(img, mask, 1, 4, fallback=-1.0, width=1)
    assert n == 6
    assert img[0, 5:8].tolist() == pytest.approx([10.0, 12.0, 14.0])  # linear across the run
    assert img[1, 0:3].tolist() == [6.0, 6.0, 6.0]  # edge run: the one side
    assert (mask[mask != 0] & 4).all()


def _toy_camera(saturation=5000.0):
    return Camera(
        {
            "name": "toy2",
            "wcs": {"method": "header"},
            "detectors": [
                {
                    "id": 0,
                    "pixel_scale": 1.0,
                    "amplifiers": [
                        {
                            "name": "L",
                            "raw_data_bbox": [0, 0, 20, 30],
                            "raw_serial_overscan_bbox": [20, 0, 8, 30],
                            "bbox": [0, 0, 20, 30],
                            "gain": 2.0,
                            "read_noise": 3.0,
                            "saturation": saturation,
                        },
                        {
                            "name": "R",
                            "raw_data_bbox": [36, 0, 20, 30],
                            "raw_serial_overscan_bbox": [28, 0, 8, 30],
                            "bbox": "[40:21,1:30]",
                            "gain": 1.5,
                            "read_noise": 4.0,
                            "saturation": saturation,
                        },
                    ],
                }
            ],
        }
    )


def test_isr_task_end_to_end_on_synthetic_raw():
    cam = _toy_camera()
    det = cam.get_detector(0)
    rng = np.random.default_rng(3)
    sky_e = 400.0
    raw = np.zeros((30, 56), np.float32)
    truth = np.full((30, 40), sky_e, np.float32)
    truth[10, 5] = 1e5  # saturates
    for amp, bias in zip(det.amplifiers, (1000.0, 1200.0)):
        sig = amp.data_to_assembled(truth[amp.bbox.slices])  # flips are their own inverse
        raw[amp.raw_data_bbox.slices] = sig / amp.gain + bias
        raw[amp.raw_serial_overscan_bbox.slices] = bias
    raw += rng.normal(0, 0.01, raw.shape).astype(np.float32)
    raw = np.minimum(raw, 5000.0)
    cfg = IsrTaskConfig()
    cfg.doBias = cfg.doDark = cfg.doFlat = False
    cfg.overscan.fitType = "MEAN"
    exp = IsrTask(config=cfg).run(Exposure(raw), camera=cam).exposure
    assert exp.image.shape == (30, 40)
    sat = (exp.mask & exp.get_plane_bitmask("SAT")) != 0
    assert sat[10, 5] and sat[9, 5] and sat[10, 4]  # grown by 1 for interpolation
    intrp = (exp.mask & exp.get_plane_bitmask("INTRP")) != 0
    assert intrp[sat].all()
    assert np.allclose(exp.image[~sat], sky_e, atol=0.1)
    # variance = signal + read noise^2 per amp; flipped amp R data lands in x = 20..39
    assert exp.variance[0, 0] == pytest.approx(sky_e + 9.0, rel=1e-3)
    assert exp.variance[0, 39] == pytest.approx(sky_e + 16.0, rel=1e-3)
    assert exp.metadata["ISR_OSCAN_LEVELR"] == pytest.approx(1200.0, abs=0.01)
    with pytest.raises(Exception, match="no bias"):
        c2 = IsrTaskConfig()
        IsrTask(config=c2).run(Exposure(raw), camera=cam)


def test_make_bias_dark_flat_on_synthetic_raws():
    from calexpress.isr.makecalibs import combine_frames, make_bias, make_dark, make_flat
    from calexpress.visitinfo import VisitInfo

    cam = _toy_camera(saturation=60000.0)
    det = cam.get_detector(0)
    rng = np.random.default_rng(4)
    bias_pattern = rng.normal(0, 5.0, (30, 40)).astype(np.float32)  # ADU, assembled frame
    dark_rate = np.abs(rng.normal(0.5, 0.1, (30, 40))).astype(np.float32)  # ADU/s
    flat_true = (1.0 + 0.05 * rng.standard_normal((30, 40))).astype(np.float32)

    def raw_frame(signal_adu, noise=1.0, oscan=1000.0, dark_time=0.0):
        raw = np.zeros((30, 56), np.float32)
        for amp in det.amplifiers:
            sl = amp.bbox.slices
            data = signal_adu[sl] + bias_pattern[sl] + dark_rate[sl] * dark_time
            raw[amp.raw_data_bbox.slices] = amp.data_to_assembled(data) + oscan
            raw[amp.raw_serial_overscan_bbox.slices] = oscan
        raw += rng.normal(0, noise, raw.shape).astype(np.float32)
        vi = VisitInfo(exposure_time=dark_time, dark_time=dark_time)
        return Exposure(raw, detector=det, visit_info=vi)

    zero = np.zeros((30, 40), np.float32)
    biases = [raw_frame(zero, oscan=1000 + 10 * i) for i in range(7)]
    master_bias = make_bias(biases, cam)
    assert np.abs(master_bias.image - bias_pattern).max() < 2.0
    assert master_bias.metadata["CALIBTYP"] == "bias" and master_bias.metadata["NINPUT"] == 7
    darks = [raw_frame(zero, dark_time=100.0) for _ in range(5)]
    master_dark = make_dark(darks, master_bias, cam)
    assert np.abs(master_dark.image - dark_rate).max() < 0.05
    gains = np.zeros((30, 40), np.float32)
    for amp in det.amplifiers:
        gains[amp.bbox.slices] = amp.gain
    flats = [raw_frame(20000.0 * flat_true / gains * s, noise=5.0) for s in (1.0, 0.9, 1.1)]
    master_flat = make_flat(flats, master_bias, None, cam)
    assert float(np.median(master_flat.image)) == pytest.approx(1.0, abs=1e-6)
    ratio = master_flat.image / flat_true
    assert np.abs(ratio / np.median(ratio) - 1).max() < 0.003
    # the clipped combination rejects a cosmic ray in one frame
    frames = [np.full((4, 4), 10.0, np.float32) + i * 0.01 for i in range(5)]
    frames[2][1, 1] = 1000.0
    mean, _ = combine_frames(frames)
    assert mean[1, 1] == pytest.approx(10.02, abs=0.02)
