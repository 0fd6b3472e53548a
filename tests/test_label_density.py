"""research/label_density.py: the per-head figures that compare how tightly renders and real sets pack labels."""

import numpy as np

from research.label_density import nearest_neighbour, people_per_cell


def test_people_per_cell_counts_each_heads_cell_mates():
    pts = np.array([[1.0, 1.0], [31.0, 2.0], [33.0, 1.0], [5.0, 40.0], [6.0, 41.0], [7.0, 42.0]])
    assert people_per_cell(pts, cell=32).tolist() == [2, 2, 1, 3, 3, 3]
    assert people_per_cell(np.zeros((0, 2))).size == 0


def test_nearest_neighbour_in_pixels_and_undefined_for_a_lone_head():
    pts = np.array([[0.0, 0.0], [3.0, 4.0], [100.0, 0.0]])
    assert np.allclose(nearest_neighbour(pts), [5.0, 5.0, np.hypot(97.0, 4.0)])
    assert np.isnan(nearest_neighbour(np.array([[1.0, 2.0]]))).all()
