"""Crowd maths with numbers that can be checked by hand."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from crowdwatch.fit import Fit
from streamer.crowd_metrics import (
    CameraGeometry,
    apply_homography,
    compute_metrics,
    fit_homography,
    local_density,
    points_in_polygon,
    polygon_area,
)


@dataclass(frozen=True)
class Th:
    density_per_m2: float = 1.0


# 1 pixel = 1/16 m: every 8x8 cell is 0.5 m x 0.5 m = 0.25 m².
SCALE_IMG = [[0, 0], [160, 0], [160, 160], [0, 160]]
SCALE_GND = [[0, 0], [10, 0], [10, 10], [0, 10]]


def scale_geometry(distance: float, size: int = 160, **kw: object) -> CameraGeometry:
    return CameraGeometry.build((size, size), calibration=(SCALE_IMG, SCALE_GND), distance=distance, **kw)


# --------------------------------------------------------------------------- homography


def test_homography_pure_scale_maps_points() -> None:
    h = fit_homography(SCALE_IMG, SCALE_GND)
    xy, w = apply_homography(h, np.array([[80.0, 40.0], [160.0, 160.0]]))
    assert np.allclose(xy, [[5.0, 2.5], [10.0, 10.0]])
    assert np.all(w > 0)


def test_homography_perspective_roundtrip_and_horizon() -> None:
    img = [[0, 470], [640, 470], [420, 180], [220, 180]]
    gnd = [[-5, 0], [5, 0], [5, 20], [-5, 20]]
    h = fit_homography(img, gnd)
    xy, w = apply_homography(h, np.asarray(img, float))
    assert np.allclose(xy, gnd, atol=1e-9)
    # The two image edges of the rectangle meet at the horizon, y = 470 - 290 * 320/220.
    horizon_y = 470 - 290 * 320 / 220
    _, w_above = apply_homography(h, np.array([[320.0, horizon_y - 5]]))
    _, w_below = apply_homography(h, np.array([[320.0, horizon_y + 5]]))
    assert w_above[0] < 0 < w_below[0]


@pytest.mark.parametrize(
    ("image", "ground", "reason"),
    [
        ([[0, 0], [1, 0], [2, 0], [0, 1]], SCALE_GND, "collinear"),
        ([[0, 0], [1, 0], [1, 1]], SCALE_GND[:3], "at least 4"),
        (SCALE_IMG, SCALE_GND[:3] + [[5, 5], [1, 1]], "image points but"),
        ([[0, 0], [1, 0], [1, float("nan")], [0, 1]], SCALE_GND, "non-finite"),
        (SCALE_IMG + [[80, 80]], SCALE_GND + [[9, 1]], "RMS error"),
    ],
)
def test_homography_rejects_bad_calibrations(image: list, ground: list, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        fit_homography(image, ground)


def test_polygon_helpers() -> None:
    square = np.array([[0, 0], [4, 0], [4, 2], [0, 2]], float)
    assert polygon_area(square) == pytest.approx(8.0)
    inside = points_in_polygon(np.array([[1, 1], [5, 1], [3.9, 1.9], [-0.1, 1]], float), square)
    assert inside.tolist() == [True, False, True, False]


def test_fit_keeps_aspect_top_left() -> None:
    fit = Fit.plan(1920, 1080, 640, 480)
    assert fit.scale == pytest.approx(1 / 3)
    assert fit.content_size == (640, 360) and fit.out_size == (640, 384)  # padded to the next multiple of 32 only
    assert np.allclose(fit.to_input([[1920, 1080]]), [[640, 360]])


def test_the_geometry_is_for_frames_of_its_fit() -> None:
    with pytest.raises(ValueError, match="not 160x160"):
        CameraGeometry.build((160, 160), fit=Fit.plan(320, 160, 160, 160), distance=1.0)  # that fit makes 160x96 frames


# --------------------------------------------------------------------------- geometry


def test_cell_areas_for_a_pure_scale() -> None:
    g = scale_geometry(1.0)
    assert g.grid_shape == (20, 20)
    assert g.valid.all()
    assert np.allclose(g.cell_area, 0.25)
    assert g.total_area == pytest.approx(100.0)


def test_letterbox_padding_cells_are_not_ground() -> None:
    # 320x160 source into 160x160: content is 160x80, the bottom half is padding.
    img = [[0, 0], [320, 0], [320, 160], [0, 160]]
    gnd = [[0, 0], [20, 0], [20, 10], [0, 10]]
    g = CameraGeometry.build((160, 160), fit=Fit(320, 160, 0.5, 160, 80, 160, 160), calibration=(img, gnd), distance=1.0)
    assert g.valid[:10].all() and not g.valid[10:].any()
    # Each content cell is 8x8 input px = 16x16 source px = 1 m x 1 m.
    assert np.allclose(g.cell_area[:10], 1.0)


def test_cells_above_horizon_and_too_far_are_masked() -> None:
    img = [[0, 470], [640, 470], [420, 180], [220, 180]]
    gnd = [[-5, 0], [5, 0], [5, 20], [-5, 20]]
    g = CameraGeometry.build((640, 480), calibration=(img, gnd), distance=1.5, max_cell_area=4.0)
    horizon_row = int((470 - 290 * 320 / 220) // 8)
    assert not g.valid[: horizon_row + 1].any()
    assert g.valid[-2:].all()
    assert g.cell_area[g.valid].max() <= 4.0
    # Nearer rows cover less ground than farther ones.
    col = 40
    rows = np.flatnonzero(g.valid[:, col])
    assert np.all(np.diff(g.cell_area[rows, col]) < 0)


def test_zone_fractional_coverage() -> None:
    # Zone covers x in [0, 12) px: one full column of cells and half of the next.
    zones = {"left": [[0, 0], [12, 0], [12, 160], [0, 160]]}
    g = scale_geometry(1.0, zones=zones)
    assert g.zone_names == ("left",)
    w = g.zone_weights[0]
    assert np.allclose(w[:, 0], 1.0) and np.allclose(w[:, 1], 0.5) and np.allclose(w[:, 2:], 0.0)


# --------------------------------------------------------------------------- per frame


def test_counts_and_zone_counts() -> None:
    zones = {"left": [[0, 0], [12, 0], [12, 160], [0, 160]]}
    g = scale_geometry(1.0, zones=zones)
    dens = np.full(g.grid_shape, 0.1)
    m = compute_metrics(dens, None, g, Th())
    assert m.count == pytest.approx(40.0)
    assert m.zones["left"] == pytest.approx(20 * 0.1 * 1.5)
    assert m.uncertainty is None
    assert m.calibrated


def test_everyone_within_distance_gives_all_pairs() -> None:
    # d far larger than the 10 m x 10 m scene: every person is close to every other,
    # so the expected close pairs are exactly C(N, 2).
    g = scale_geometry(100.0)
    rng = np.random.default_rng(0)
    dens = rng.random(g.grid_shape)
    dens *= 10.0 / dens.sum()
    m = compute_metrics(dens, None, g, Th())
    assert m.close_pairs == pytest.approx(10 * 9 / 2)


def test_isolated_person_has_no_pair_and_two_people_one_pair() -> None:
    g = scale_geometry(1.5)
    dens = np.zeros(g.grid_shape)
    dens[5, 5] = 1.0
    assert compute_metrics(dens, None, g, Th()).close_pairs == pytest.approx(0.0)
    # A second person 1 m away (two cells) is within 1.5 m: one pair.
    dens[5, 7] = 1.0
    assert compute_metrics(dens, None, g, Th()).close_pairs == pytest.approx(1.0)
    # ... 2.5 m away (five cells) is not.
    dens[5, 7], dens[5, 10] = 0.0, 1.0
    assert compute_metrics(dens, None, g, Th()).close_pairs == pytest.approx(0.0)


def test_a_person_spread_over_cells_is_not_paired_with_itself() -> None:
    g = scale_geometry(1.5)
    dens = np.zeros(g.grid_shape)
    dens[5:7, 5:7] = 0.25  # one person's density blob over four cells
    m = compute_metrics(dens, None, g, Th())
    assert m.count == pytest.approx(1.0)
    assert m.close_pairs == pytest.approx(0.0)


def test_uniform_density_matches_the_formula_in_the_interior() -> None:
    # rho = 2 people/m² (0.5 per 0.25 m² cell), d = 1.1 m. Away from the borders each
    # person has rho * pi * d² - 1 others within d (docs/METRICS.md).
    d, rho = 1.1, 2.0
    g = CameraGeometry.build((640, 640), calibration=([[0, 0], [640, 0], [640, 640], [0, 640]],
                             [[0, 0], [40, 0], [40, 40], [0, 40]]), distance=d)  # fmt: skip
    dens = np.full(g.grid_shape, 0.5)
    m = compute_metrics(dens, None, g, Th(density_per_m2=1.5))
    n = dens.sum()
    interior = 0.5 * n * (rho * math.pi * d * d - 1)
    # Border cells see part of their disc outside the view: fewer pairs, < 3% here.
    assert 0.97 * interior < m.close_pairs < interior
    assert m.density_peak_per_m2 == pytest.approx(rho)
    assert np.allclose(local_density(dens, g), rho)
    assert m.area_over_density_ratio == pytest.approx(1.0)
    assert compute_metrics(dens, None, g, Th(density_per_m2=2.5)).area_over_density_ratio == 0.0


def test_area_over_density_ratio_is_a_fraction_of_ground_area() -> None:
    g = scale_geometry(0.2)  # disc smaller than a cell: local density = cell density
    dens = np.zeros(g.grid_shape)
    dens[:5, :] = 1.0  # 4 people/m² on a quarter of the ground
    m = compute_metrics(dens, None, g, Th(density_per_m2=3.0))
    assert m.area_over_density_ratio == pytest.approx(0.25)
    assert m.density_peak_per_m2 == pytest.approx(4.0)


def test_uncertainty_from_cell_std_and_from_mask_counts() -> None:
    g = scale_geometry(1.0)
    dens = np.zeros(g.grid_shape)
    unc = np.full(g.grid_shape, 0.01)
    assert compute_metrics(dens, unc, g, Th()).uncertainty == pytest.approx(4.0)
    m = compute_metrics(dens, unc, g, Th(), mask_counts=np.array([9.0, 11.0, 9.0, 11.0]))
    assert m.uncertainty == pytest.approx(1.0)


def test_uncalibrated_uses_pixel_units() -> None:
    g = CameraGeometry.build((160, 160), distance=16.0)
    assert not g.calibrated
    assert np.allclose(g.cell_area, 64.0)
    dens = np.zeros(g.grid_shape)
    dens[5, 5] = dens[5, 6] = 1.0  # 8 px apart, within 16 px
    m = compute_metrics(dens, None, g, Th(density_per_m2=1e-9))
    assert m.close_pairs == pytest.approx(1.0)
    assert not m.calibrated
    assert m.count == pytest.approx(2.0)


def test_for_camera_builds_from_config(tmp_path: object) -> None:
    from crowdwatch.config import parse_config

    cfg = parse_config(
        {"cameras": {"cam": {"url": "synthetic://", "width": 160, "height": 160,
                             "calibration": {"image": SCALE_IMG, "ground": SCALE_GND},
                             "zones": {"all": [[0, 0], [160, 0], [160, 160], [0, 160]]}}}},  # fmt: skip
        base_dir=tmp_path,  # type: ignore[arg-type]
    )
    g = CameraGeometry.for_camera(cfg.cameras["cam"])
    assert g.calibrated and g.distance == 1.5
    assert np.allclose(g.cell_area, 0.25) and np.allclose(g.zone_weights, 1.0)


@pytest.mark.parametrize(
    ("density", "match"),
    [(np.zeros((3, 3)), "does not match"), (np.full((20, 20), np.nan), "non-finite")],
)
def test_bad_density_is_rejected(density: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        compute_metrics(density, None, scale_geometry(1.0), Th())
