"""FootprintSet: labels, bboxes, peaks, grow, merge, select."""

from __future__ import annotations

import numpy as np
from calexpress.footprints import FootprintSet, grow_stencil


def _two_blobs():
    img = np.zeros((40, 60), np.float32)
    img[10, 10] = 5.0
    img[10, 12] = 4.0  # second peak of the same footprint
    img[30, 45] = 3.0
    mask = np.zeros(img.shape, np.int32)
    mask[9:12, 9:14] = 1
    mask[29:32, 44:47] = 2
    return img, mask


def test_from_labels_bbox_npix_peaks():
    img, labels = _two_blobs()
    fs = FootprintSet.from_labels(labels, img, noise=0.5)
    assert len(fs) == 2
    assert fs.bbox(0).x0 == 9 and fs.bbox(0).width == 5 and fs.bbox(0).height == 3
    assert list(fs.npix) == [15, 9]
    p = fs.peaks(0)
    assert list(p["x"]) == [10, 12] and list(p["value"]) == [5.0, 4.0]
    assert p["significance"][0] == 10.0
    assert fs.mask(1).sum() == 9 and fs.mask(1).shape == (3, 3)
    assert list(fs.n_peaks) == [2, 1]


def test_grow_manhattan_and_isotropic_area():
    img = np.zeros((50, 50), np.float32)
    img[25, 25] = 1
    lab = (img > 0).astype(np.int32)
    fs = FootprintSet.from_labels(lab, img)
    n = 4
    g = fs.grow(n, isotropic=False)
    assert g.npix[0] == 2 * n * n + 2 * n + 1  # diamond
    gi = fs.grow(n, isotropic=True)
    assert gi.npix[0] == len(grow_stencil(n, True)[0])
    assert gi.npix[0] > g.npix[0]
    assert g.peak_x[0] == 25 and g.peak_y[0] == 25


def test_grow_merges_touching_and_keeps_peaks():
    img, labels = _two_blobs()
    img[10, 20] = 2.0
    labels[10, 20] = 3
    fs = FootprintSet.from_labels(labels, img)
    assert len(fs) == 3
    g = fs.grow(3)
    assert len(g) == 2  # the blob at x=20 merged with the first one
    assert g.n_peaks.sum() == 4
    assert g.peaks(0)["value"][0] == 5.0


def test_merge_and_select():
    img, labels = _two_blobs()
    fs = FootprintSet.from_labels(labels, img)
    lab2 = np.zeros_like(labels)
    lab2[20, 20] = 1
    img2 = np.zeros_like(img)
    img2[20, 20] = 7.0
    other = FootprintSet.from_labels(lab2, img2)
    m = fs.merge(other)
    assert len(m) == 3 and m.n_peaks.sum() == 4
    s = m.select(np.array([True, False, True]))
    assert len(s) == 2
    assert s.labels.max() == 2
    assert s.n_peaks.sum() == int(m.n_peaks[0] + m.n_peaks[2])
