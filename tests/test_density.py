from __future__ import annotations

import time

import numpy as np
import pytest
from scipy.special import erf

import adapt.data.density as density_mod
from adapt.data.density import STRIDE, SigmaRule, density_map, kernel_sigmas


def _brute_force(points: np.ndarray, sigmas: np.ndarray, hw: tuple[int, int], stride: int = 8) -> np.ndarray:
    """Reference: per point, per cell, the exact Gaussian mass (no banding, no truncation), renormalised."""
    h, w = hw
    out = np.zeros((h // stride, w // stride))
    ey = np.arange(h // stride + 1) * stride
    ex = np.arange(w // stride + 1) * stride
    for (x, y), s in zip(points, sigmas):
        my = np.diff(0.5 * erf((ey - y) / (np.sqrt(2) * s)))
        mx = np.diff(0.5 * erf((ex - x) / (np.sqrt(2) * s)))
        cell = np.outer(my, mx)
        out += cell / cell.sum()
    return out


def test_sum_equals_inside_count_with_edges_corners_and_outside():
    h, w = 96, 128
    eps = 1e-3
    edge_points = [
        (0, 0), (w - eps, 0), (0, h - eps), (w - eps, h - eps),  # corners
        (0, 40), (w - eps, 40), (60, 0), (60, h - eps),  # edges
        (63.5, 47.5),
    ]
    outside = [(-0.01, 10), (w, 10), (10, h), (10, -5), (w + 100, h + 100)]
    rng = np.random.default_rng(0)
    random_inside = rng.uniform((0, 0), (w, h), size=(200, 2))
    pts = np.concatenate([np.array(edge_points + outside, dtype=float), random_inside])
    res = density_map(pts, (h, w))
    assert res.density.dtype == np.float32
    assert res.density.shape == (h // 8, w // 8)
    assert res.outside == len(outside)
    inside = len(pts) - len(outside)
    assert res.density.sum(dtype=np.float64) == pytest.approx(inside, rel=1e-6)
    assert res.count == pytest.approx(inside, rel=1e-6)
    assert (res.density >= 0).all()


@pytest.mark.parametrize("xy", [(0.0, 0.0), (127.999, 95.999), (0.0, 50.0), (64.0, 95.999)])
def test_each_edge_point_adds_exactly_one_even_with_wide_kernel(xy):
    res = density_map(np.array([xy]), (96, 128), head_sizes=np.array([120.0]))  # sigma = 30 px
    assert res.density.sum(dtype=np.float64) == pytest.approx(1.0, abs=1e-6)
    assert res.outside == 0


def test_matches_exact_cell_integration():
    rng = np.random.default_rng(1)
    pts = rng.uniform((0, 0), (160, 120), size=(40, 2))
    sig = rng.uniform(1.0, 20.0, size=40)
    res = density_map(pts, (120, 160), sigmas=sig)
    np.testing.assert_allclose(res.density, _brute_force(pts, sig, (120, 160)), atol=1e-6)


def test_point_on_cell_corner_splits_evenly_and_centre_point_is_symmetric():
    d = density_map(np.array([[32.0, 24.0]]), (64, 64), sigmas=np.array([3.0])).density
    quad = d[2:4, 3:5]
    np.testing.assert_allclose(quad, quad[0, 0], rtol=1e-5)
    assert quad.sum() > 0.95
    d = density_map(np.array([[36.0, 28.0]]), (64, 64), sigmas=np.array([4.0])).density
    assert np.unravel_index(d.argmax(), d.shape) == (3, 4)
    # mirror symmetry around the cell centre (row 3, col 4)
    np.testing.assert_allclose(d[3, 3], d[3, 5], rtol=1e-5)
    np.testing.assert_allclose(d[2, 4], d[4, 4], rtol=1e-5)


def test_banding_in_groups_changes_nothing(monkeypatch):
    rng = np.random.default_rng(2)
    pts = rng.uniform((0, 0), (512, 384), size=(3000, 2))
    whole = density_map(pts, (384, 512)).density
    monkeypatch.setattr(density_mod, "GROUP", 97)
    banded = density_map(pts, (384, 512)).density
    np.testing.assert_allclose(banded, whole, atol=2e-6)


def test_empty_points_and_stride():
    res = density_map(np.zeros((0, 2)), (64, 32))
    assert res.density.shape == (8, 4) and res.density.sum() == 0 and res.outside == 0
    res = density_map([], (64, 32), stride=16)
    assert res.density.shape == (4, 2)
    res = density_map(np.array([[5.0, 5.0]]), (32, 32), stride=4)
    assert res.density.shape == (8, 8) and res.density.sum() == pytest.approx(1.0)
    assert STRIDE == 8


@pytest.mark.parametrize("hw", [(100, 64), (64, 30), (0, 64)])
def test_size_not_multiple_of_stride_is_rejected_with_numbers(hw):
    with pytest.raises(ValueError, match=rf"{hw[0]}x{hw[1]}.*stride 8"):
        density_map(np.zeros((0, 2)), hw)


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="shape"):
        density_map(np.zeros((3, 3)), (64, 64))
    with pytest.raises(ValueError, match="NaN"):
        density_map(np.array([[np.nan, 1.0]]), (64, 64))
    with pytest.raises(ValueError, match="sigmas"):
        density_map(np.zeros((2, 2)), (64, 64), sigmas=np.ones(3))
    with pytest.raises(ValueError, match="head_sizes"):
        kernel_sigmas(np.zeros((2, 2)), head_sizes=np.ones(3))


# --------------------------------------------------------------------------- sigma rule


def test_sigma_from_head_size_with_floor_and_ceiling():
    pts = np.array([[10.0, 10.0], [50.0, 50.0], [90.0, 10.0], [10.0, 90.0]])
    sig = kernel_sigmas(pts, head_sizes=np.array([20.0, 2.0, 400.0, 36.0]))
    np.testing.assert_allclose(sig, [5.0, 1.0, 32.0, 9.0])  # 0.25 * d, clipped to [1, 32]


def test_unknown_head_sizes_fall_back_to_geometry():
    square = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    geo = 0.3 * (10 + 10 + np.sqrt(200)) / 3  # mean distance to the 3 nearest others
    sig = kernel_sigmas(square, head_sizes=np.array([np.nan, 40.0, 0.0, -1.0]))
    np.testing.assert_allclose(sig, [geo, 10.0, geo, geo])
    np.testing.assert_allclose(kernel_sigmas(square), geo)


def test_geometry_adaptive_few_points_lone_point_and_duplicates():
    assert kernel_sigmas(np.array([[5.0, 5.0]]))[0] == pytest.approx(8.0)  # lone point default
    two = kernel_sigmas(np.array([[0.0, 0.0], [20.0, 0.0]]))
    np.testing.assert_allclose(two, 6.0)  # 0.3 * 20, with only one neighbour available
    dup = kernel_sigmas(np.array([[3.0, 3.0]] * 4))
    np.testing.assert_allclose(dup, 1.0)  # floor
    far = kernel_sigmas(np.array([[0.0, 0.0], [1000.0, 0.0]]))
    np.testing.assert_allclose(far, 32.0)  # ceiling
    assert kernel_sigmas(np.zeros((0, 2))).shape == (0,)


def test_custom_rule_and_explicit_sigmas_are_clipped():
    rule = SigmaRule(head_factor=0.5, min_sigma=2.0, max_sigma=4.0)
    np.testing.assert_allclose(kernel_sigmas(np.array([[1.0, 1.0]]), np.array([6.0]), rule), 3.0)
    a = density_map(np.array([[30.0, 30.0]]), (64, 64), sigmas=np.array([0.01])).density
    b = density_map(np.array([[30.0, 30.0]]), (64, 64), sigmas=np.array([1.0])).density
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError):
        SigmaRule(min_sigma=5.0, max_sigma=1.0)


def test_kernel_width_follows_sigma():
    narrow = density_map(np.array([[60.0, 60.0]]), (128, 128), sigmas=np.array([2.0])).density
    wide = density_map(np.array([[60.0, 60.0]]), (128, 128), sigmas=np.array([16.0])).density
    assert narrow.max() > 0.5 > wide.max()
    assert (wide > 1e-3).sum() > (narrow > 1e-3).sum()


def test_speed_500_points_and_thousands():
    rng = np.random.default_rng(3)
    pts = rng.uniform((0, 0), (1024, 768), size=(500, 2))
    density_map(pts, (768, 1024))  # warm-up
    t = time.perf_counter()
    for _ in range(5):
        density_map(pts, (768, 1024))
    assert (time.perf_counter() - t) / 5 < 0.05
    many = rng.uniform((0, 0), (1920, 1080), size=(5000, 2))
    t = time.perf_counter()
    res = density_map(many, (1080, 1920))
    assert time.perf_counter() - t < 0.5
    assert res.count == pytest.approx(5000, rel=1e-6)
