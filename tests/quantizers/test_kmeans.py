"""1-D k-means shared by NUUQ and Liss: known clusters, quantile init, empty clusters, masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantjax.quantizers import kmeans


def _numpy_lloyd(x, k, iters):
  """Reference: the same algorithm (quantile init, midpoint assignment, empty keeps) in float64."""
  x = np.sort(np.asarray(x, np.float64).ravel())
  centres = np.quantile(x, (np.arange(k) + 0.5) / k)
  for _ in range(iters):
    assign = np.searchsorted((centres[1:] + centres[:-1]) / 2, x, side="left")
    for j in range(k):
      if np.any(assign == j):
        centres[j] = x[assign == j].mean()
  return np.sort(centres)


def test_known_clusters():
  x = jnp.array([10.1, 0.0, 5.1, 0.1, 0.2, 5.0, 5.2, 10.0])
  np.testing.assert_allclose(kmeans.lloyd(x, 3), [0.1, 5.1, 10.05], rtol=1e-6)


def test_zero_iterations_give_the_quantile_initialisation():
  # k = 3: probabilities 1/6, 1/2, 5/6 of 0..8, linearly interpolated: 4/3, 4, 20/3.
  x = jnp.arange(9.0)[::-1]
  np.testing.assert_allclose(kmeans.lloyd(x, 3, iters=0), [4 / 3, 4.0, 20 / 3], rtol=1e-6)


def test_empty_cluster_keeps_its_centre():
  # Init [0, 0, 10/3]; the second centre gets no value (ties go to the lower centre) and stays 0.
  x = jnp.array([0.0, 0.0, 0.0, 0.0, 10.0])
  centres = kmeans.lloyd(x, 3)
  np.testing.assert_array_equal(centres, [0.0, 0.0, 10.0])
  # The merged entry is never used: both zeros map to index 0.
  np.testing.assert_array_equal(kmeans.nearest_index(x, centres), [0, 0, 0, 0, 2])


def test_mask_clusters_only_the_selected_values():
  x = jnp.array([-5.0, -3.0, 0.0, 1.0, 1.2, 4.0, 4.4])
  np.testing.assert_allclose(kmeans.lloyd(x, 2, mask=x > 0), [1.1, 4.2], rtol=1e-6)
  np.testing.assert_array_equal(kmeans.lloyd(x, 2, mask=x > 10), [0.0, 0.0])


def test_nearest_index_ties_go_down_and_repeats_share_an_index():
  levels = jnp.array([0.0, 1.0, 1.0, 3.0])
  x = jnp.array([-7.0, 0.5, 0.51, 1.0, 1.5, 2.0, 2.01, 9.0])
  np.testing.assert_array_equal(kmeans.nearest_index(x, levels), [0, 0, 1, 1, 1, 1, 3, 3])


@pytest.mark.parametrize("k", [2, 16, 64, 256])
def test_nearest_index_and_level_match_a_numpy_search(k):
  rng = np.random.default_rng(k)
  levels = np.sort(rng.normal(size=k)).astype(np.float32)
  levels[k // 2] = levels[k // 2 - 1]  # a merged level
  midpoints = np.float32(0.5) * (levels[1:] + levels[:-1])
  # Random values, the midpoints themselves (ties go down) and their float neighbours.
  x = np.concatenate([rng.normal(scale=2.0, size=3000).astype(np.float32), midpoints,
                      np.nextafter(midpoints, np.float32(np.inf)),
                      np.nextafter(midpoints, np.float32(-np.inf))]).reshape(3, -1)
  raw = np.searchsorted(midpoints, x, side="left")
  first = np.searchsorted(levels, levels[raw], side="left")
  got = jax.jit(kmeans.nearest_index)(x, levels)
  assert got.dtype == jnp.int32
  np.testing.assert_array_equal(got, first)
  np.testing.assert_array_equal(jax.jit(kmeans.nearest_level)(x, levels), levels[raw])


def test_matches_numpy_reference_under_jit():
  x = jax.random.normal(jax.random.key(0), (64, 80))
  lloyd = jax.jit(lambda v: kmeans.lloyd(v, 5, 15))
  got = lloyd(x)
  np.testing.assert_allclose(got, _numpy_lloyd(x, 5, 15), rtol=1e-4, atol=1e-5)
  assert np.all(np.diff(np.asarray(got)) > 0)


@pytest.mark.parametrize("k", [5])
def test_iterations_do_not_increase_distortion(k):
  x = jax.random.laplace(jax.random.key(1), (4096,))
  before, after = kmeans.lloyd(x, k, 0), kmeans.lloyd(x, k, 60)
  assert float(kmeans.distortion(x, after)) < float(kmeans.distortion(x, before))
  # A fixed point of Lloyd: each centre is (close to) the mean of the values nearest to it.
  idx = np.asarray(kmeans.nearest_index(x, after))
  means = [np.asarray(x)[idx == j].mean() for j in range(k)]
  np.testing.assert_allclose(after, means, rtol=1e-3, atol=1e-4)
