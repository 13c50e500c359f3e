"""Cameras from YAML: geometry, header interpretation, raw reading, initial WCS, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml
from astropy.io import fits
from calexpress.calibs import CalibError, CrosstalkCalib, Defects, Linearizer
from calexpress.camera import CameraError, available_cameras, get_camera, identify_camera, make_cd_matrix
from calexpress.fitsio import FitsReadError
from calexpress.geom import Box


def test_packaged_cameras():
    assert set(available_cameras()) >= {"obs_test", "nickel", "simcamA"}
    ot = get_camera("obs_test")
    assert ot.gen2_mapper == "lsst.obs.test.testMapper.TestMapper"
    assert ot.data_id_keys == {"visit": int, "filter": str, "ccd": int}
    assert ot.path_templates["raw"] == "raw/raw_v{visit}_f{filter}.fits.gz"
    assert ot.isr_overrides == {"doBias": False, "doDark": False, "doFlat": False}
    det = ot.get_detector(0)
    assert det.bbox == Box(0, 0, 1018, 2000) and det.raw_shape == (2000, 1026)
    a10 = det["10"]
    assert a10.raw_data_bbox == Box(517, 0, 509, 1000) and a10.raw_serial_overscan_bbox == Box(
        513, 0, 4, 1000
    )
    assert a10.bbox == Box(509, 0, 509, 1000) and a10.gain == 1.74151
    sim = get_camera("simcamA").get_detector(0)
    flips = {a.name: a.flip_x for a in sim.amplifiers}
    assert flips == {"C00": False, "C01": True, "C02": False, "C03": True}
    assert sim["C01"].bbox == Box(512, 0, 512, 4096) and sim["C01"].raw_data_bbox == Box(560, 0, 512, 4096)
    assert sim["C00"].raw_parallel_overscan_bbox == Box(8, 4096, 512, 16)
    assert sim["C00"].linearity_type == "Squared" and sim.crosstalk["coeffs"].shape == (4, 4)
    nk = get_camera("nickel").get_detector(0)
    assert nk.raw_shape == (1024, 1056) and nk["A"].raw_serial_overscan_bbox == Box(1024, 0, 32, 1024)


def test_new_camera_needs_only_yaml(tmp_path):
    """A camera with two HDU-per-amp amplifiers, written as YAML only, reads its raw."""
    cfg = {
        "name": "toy",
        "instrument": ["TOY"],
        "raw": {"layout": "hdu_per_amp"},
        "data_id_keys": {
            "visit": {"type": "int", "keyword": "EXPNUM"},
            "ccd": {"type": "int", "value": 0},
            "filter": {"type": "str"},
        },
        "header": {
            "exposure_time": "EXPTIME",
            "filter": "FILTER",
            "date": {"keyword": "DATE-OBS"},
            "boresight_ra": "RA",
            "boresight_dec": "DEC",
            "rotation": "ROT",
        },
        "wcs": {"method": "boresight"},
        "detectors": [
            {
                "id": 0,
                "pixel_scale": 0.5,
                "amplifiers": [
                    {
                        "name": "L",
                        "hdu": 1,
                        "raw_bbox": [0, 0, 12, 8],
                        "raw_data_bbox": [2, 0, 10, 8],
                        "raw_serial_overscan_bbox": [0, 0, 2, 8],
                        "bbox": "[1:10,1:8]",
                        "gain": 2.0,
                    },
                    {
                        "name": "R",
                        "hdu": "AMPR",
                        "raw_bbox": [12, 0, 12, 8],
                        "raw_data_bbox": [14, 0, 10, 8],
                        "raw_serial_overscan_bbox": [12, 0, 2, 8],
                        "bbox": "[20:11,1:8]",
                        "gain": 2.0,
                    },
                ],
            }
        ],
    }
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cam = get_camera(str(path))
    assert cam.get_detector(0)["R"].flip_x and cam.get_detector(0).bbox == Box(0, 0, 20, 8)
    hdr = fits.Header(
        {
            "INSTRUME": "TOY",
            "EXPNUM": 7,
            "EXPTIME": 30.0,
            "FILTER": "V",
            "DATE-OBS": "2024-01-01T00:00:00",
            "RA": 10.0,
            "DEC": 20.0,
            "ROT": 30.0,
        }
    )
    left = np.arange(96, dtype=np.uint16).reshape(8, 12)
    hdul = fits.HDUList(
        [fits.PrimaryHDU(header=hdr), fits.ImageHDU(left), fits.ImageHDU(left + 1000, name="AMPR")]
    )
    raw_path = tmp_path / "toy.fits"
    hdul.writeto(raw_path)
    exp = cam.read_raw(raw_path)
    assert exp.image.shape == (8, 24) and exp.image.dtype == np.float32
    assert exp.image[3, 14] == left[3, 2] + 1000
    assert exp.filter == "V" and cam.metadata_to_data_id(exp.metadata) == {
        "visit": 7,
        "ccd": 0,
        "filter": "V",
    }
    vi = exp.visit_info
    assert vi.exposure_time == 30.0
    # start + 15 s, converted UTC -> TAI (37 s in 2024)
    assert (vi.date.tai.mjd - 60310.0) * 86400 == pytest.approx(15.0 + 37.0, abs=1e-3)
    # boresight WCS: centre of the assembled frame at the boresight, 0.5"/pixel
    ra, dec = exp.wcs.pixel_to_world_values(9.5, 3.5)
    assert (ra, dec) == pytest.approx((10.0, 20.0))
    assert np.sqrt(abs(np.linalg.det(exp.wcs.wcs.cd))) * 3600 == pytest.approx(0.5)


def test_cd_matrix_orientation():
    # orientation 0: +y north, +x west (RA decreasing); 90: +y east
    assert make_cd_matrix(1.0, 0.0) == pytest.approx(np.array([[-1.0, 0.0], [0.0, 1.0]]))
    assert make_cd_matrix(1.0, 90.0) == pytest.approx(np.array([[0.0, 1.0], [1.0, 0.0]]))


def test_obs_test_header_and_wcs(obs_test_repo):
    cam = get_camera("obs_test")
    hdr = fits.getheader(obs_test_repo / "raw" / "raw_v1_fg.fits.gz")
    assert cam.metadata_to_data_id(hdr, "raw_v1_fg.fits.gz") == {"visit": 1, "filter": "g", "ccd": 0}
    vi = cam.visit_info_from_header(hdr, "raw_v1_fg.fits.gz")
    assert vi.exposure_time == 15.0 and vi.dark_time == 15.0
    assert vi.date.scale == "tai" and vi.date.mjd == pytest.approx(51195.2035520278 + 7.5 / 86400, abs=1e-9)
    assert vi.boresight_rot_angle == pytest.approx(-248.022002123)
    assert vi.boresight_az_alt == pytest.approx((289.979375363, 90 - 42.0568785956))
    assert vi.exposure_id == 1 and vi.obs_type == "science"
    wcs = cam.initial_wcs(hdr, vi)
    # same pixel scale and orientation as the simulator's own header CD matrix (0.2"/px, rotated)
    assert wcs.wcs.cd == pytest.approx(
        np.array([[hdr["CD1_1"], hdr["CD1_2"]], [hdr["CD2_1"], hdr["CD2_2"]]]), rel=1e-4
    )
    # the optical axis lies where LSST's focal plane puts it: boresight at CRPIX, shifted by the 4-px quirk
    assert wcs.wcs.crval == pytest.approx([79.2452196867, -9.70229541541])
    ra, dec = wcs.pixel_to_world_values(wcs.wcs.crpix[0] - 1, wcs.wcs.crpix[1] - 1)
    assert (ra, dec) == pytest.approx((79.2452196867, -9.70229541541))
    # pixel of the optical axis: refpos - R(yaw)^-1 offset / pixel size, then the (-4, 0) Gen2 trim shift
    axis = (2035.5 + 42.21914 / 0.01 - 4, 999.5 - 42.26073 / 0.01)
    assert wcs.wcs.crpix - 1 == pytest.approx(axis)
    # radial distortion: the SIP term moves the far corner by ~0.2 pixel
    pix = np.array([[0.0, 0.0]])
    sky_sip = wcs.all_pix2world(pix, 0)
    sky_lin = wcs.wcs_pix2world(pix, 0)
    shift_px = np.hypot(*(sky_sip - sky_lin)[0] * [math.cos(math.radians(-9.7)), 1]) * 3600 / 0.2
    assert 0.05 < shift_px < 0.5


def test_simcam_and_nickel_headers(simcam_dir, nickel_dir):
    sim = get_camera("simcamA")
    exp = sim.read_raw(simcam_dir / "raw" / "simcamA_0001001_g.fits.fz")
    assert exp.image.shape == (4112, 2208) and exp.metadata["EXPID"] == 1001 and "INSTRUME" in exp.metadata
    assert sim.metadata_to_data_id(exp.metadata) == {"visit": 1001, "ccd": 0, "filter": "g"}
    assert exp.visit_info.date.mjd == pytest.approx(61120.13489631589)
    assert exp.visit_info.dark_time == 61.0 and exp.visit_info.boresight_rot_angle == pytest.approx(
        63.5459348
    )
    assert exp.wcs.sip is not None
    assert np.allclose(
        exp.wcs.pixel_to_world_values(1023.5, 2047.5), (161.40836495291242, 2.8243300687707436)
    )
    nik = get_camera("nickel")
    types = {}
    for n in (1001, 1035, 1048):
        hdr = fits.getheader(nickel_dir / "raw" / f"d{n}.fits")
        types[n] = nik.obs_type_from_header(hdr)
        assert nik.metadata_to_data_id(hdr)["visit"] == n
    assert types == {1001: "bias", 1035: "flat", 1048: "science"}
    e = nik.read_raw(nickel_dir / "raw" / "d1048.fits")
    assert e.filter == "V" and e.visit_info.boresight_ra_dec == pytest.approx(
        (182.52625, 18.5426944), abs=1e-5
    )
    assert e.wcs.pixel_to_world_values(511, 511) == pytest.approx((182.5262908936, 18.54287910461))


def test_errors_name_the_file(tmp_path, nickel_dir, simcam_dir):
    with pytest.raises(
        CameraError, match="simcamA_0001001_g.fits.fz: INSTRUME='simcamA' is not camera nickel"
    ):
        get_camera("nickel").read_raw(simcam_dir / "raw" / "simcamA_0001001_g.fits.fz")
    truncated = tmp_path / "d1048.fits"
    truncated.write_bytes((nickel_dir / "raw" / "d1048.fits").read_bytes()[:100_000])
    with pytest.raises(FitsReadError, match="d1048.fits: truncated"):
        get_camera("nickel").read_raw(truncated)
    odd = tmp_path / "odd.fits"
    fits.PrimaryHDU(np.zeros((10, 10), np.uint16), header=fits.Header({"INSTRUME": "ACME"})).writeto(odd)
    with pytest.raises(CameraError, match=r"odd.fits: raw of an unknown camera \(INSTRUME='ACME'"):
        identify_camera(odd)
    shaped = tmp_path / "shape.fits"
    fits.PrimaryHDU(
        np.zeros((10, 10), np.uint16), header=fits.Header({"INSTRUME": "Nickel Direct Camera"})
    ).writeto(shaped)
    with pytest.raises(CameraError, match="shape.fits: raw image is 10x10 pixels"):
        get_camera("nickel").read_raw(shaped)
    with pytest.raises(CameraError, match="unknown camera 'nope'"):
        get_camera("nope")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text(
        "name: bad\ndetectors: [{id: 0, amplifiers: [{name: A, raw_data_bbox: [0, 0, 4, 4], "
        "bbox: [0, 0, 5, 4]}]}]\n"
    )
    with pytest.raises(CameraError, match="differ in size"):
        get_camera(str(bad_yaml))


def test_identify(obs_test_repo, nickel_dir, simcam_dir):
    assert identify_camera(obs_test_repo / "raw" / "raw_v3_fr.fits.gz").name == "obs_test"
    assert identify_camera(nickel_dir / "raw" / "d1001.fits").name == "nickel"
    assert identify_camera(simcam_dir / "raw" / "simcamA_0001002_r.fits.fz").name == "simcamA"


def test_calib_readers(obs_test_repo, simcam_dir, tmp_path):
    d = Defects.read(obs_test_repo / "defects" / "defects.fits")
    assert len(d) == 504 and d.npixels == 1364
    assert [b for b in d.boxes if b.height > 1] == [Box(848, 1000, 1, 861)]
    fits_boxes = Defects.read(simcam_dir / "calib" / "defects_det0.fits")
    ecsv_boxes = Defects.read(simcam_dir / "calib" / "defects_det0.ecsv")
    assert fits_boxes.boxes == ecsv_boxes.boxes and len(fits_boxes) == 336
    fits_boxes.write(tmp_path / "d.fits")
    assert Defects.read(tmp_path / "d.fits").boxes == fits_boxes.boxes
    m = np.zeros((5, 6), bool)
    m[1:4, 2] = True
    m[0, 5] = True
    assert Defects.from_mask(m).boxes == [Box(2, 1, 1, 3), Box(5, 0, 1, 1)]
    lin = Linearizer.read(simcam_dir / "calib" / "linearizer.yaml")
    data = np.full((2, 2), 1000.0, np.float32)
    lin.apply(data, "C00")
    assert data[0, 0] == pytest.approx(1000 + 1.4878826017949913e-07 * 1e6)
    poly = Linearizer({"A": {"type": "Polynomial", "coeffs": [1e-6, 1e-9]}})
    data = np.full((1, 1), 100.0, np.float32)
    poly.apply(data, "A")
    assert data[0, 0] == pytest.approx(100 + 1e-6 * 1e4 + 1e-9 * 1e6, rel=1e-6)
    lut = Linearizer({"A": {"type": "LookupTable", "coeffs": [0], "table": np.arange(10) * 0.5}})
    data = np.array([[3.0, 20.0]], np.float32)
    lut.apply(data, "A")
    assert data.tolist() == [[4.5, 24.5]]
    xt = CrosstalkCalib.read(simcam_dir / "calib" / "crosstalk.yaml")
    assert xt.amp_order == ["C00", "C01", "C02", "C03"] and xt.coeffs[1, 3] == pytest.approx(
        -0.00023548784077736596
    )
    with pytest.raises(CalibError, match="crosstalk.yaml: no detector 5"):
        CrosstalkCalib.read(simcam_dir / "calib" / "crosstalk.yaml", detector=5)
