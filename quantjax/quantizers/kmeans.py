"""One-dimensional k-means (Lloyd's algorithm) for the non-uniform quantizers (NUUQ, Liss et al.).

The values are sorted once. Centres start at the quantiles `(i + 1/2)/k` of the values, then a
fixed number of Lloyd iterations alternate the nearest-centre assignment (a binary search of each
value among the midpoints of the sorted centres: O(n log k) time, O(n) memory, so a layer of a few
million weights is fine) with the centre update (a sorted segment sum).

Determinism: the iteration count is static, there is no random restart, and a cluster that receives
no value keeps its previous centre. In one dimension Lloyd's update keeps sorted centres sorted (a
cluster is an interval between two midpoints, so its mean lies between its neighbours' intervals),
so the output is sorted ascending. Centres that start equal (values with many ties) stay equal only
while the tie lasts: the midpoint between two equal centres splits their values, so they separate
on the next update where the data allow it.

Everything is jit-able with `k` and `iters` static.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

Array = jax.Array


def interval_lookup(x: Array, midpoints: Array, table: Array) -> Array:
  """`table[i]` for each value of `x`, i the number of `midpoints` (ascending) below the value.

  A chain of selects, one per midpoint, fused into one elementwise pass: no [..., k] comparison
  tensor and no gather. On a 2-core CPU, for 1.6 M values, 0.6-1.9 ms for tables of 4-64 entries
  and 7 ms for 256, against 2-3 ms (4-32 entries), 137 ms (64) and 512 ms (256) for
  `searchsorted(method='compare_all')` followed by a gather.
  """
  out = jnp.full(jnp.shape(x), table[0], table.dtype)
  for j in range(midpoints.shape[0]):  # midpoints ascending: the last one below x decides
    out = jnp.where(midpoints[j] < x, table[j + 1], out)
  return out


def nearest_index(x: Array, levels: Array) -> Array:
  """Index of the nearest entry of the ascending table `levels` for each value of `x`.

  A value exactly halfway between two levels goes to the lower one. Repeated entries (levels that
  were merged) all map to the first of them, so the index histogram counts a merged level once.

  Args:
    x: values, any shape.
    levels: [k] ascending table (repeats allowed).

  Returns:
    int32 indices with the shape of `x`.
  """
  midpoints = 0.5 * (levels[1:] + levels[:-1])  # [k-1]
  # The first entry equal to each level: merged (repeated) entries share one index.
  first = jnp.searchsorted(levels, levels, side="left").astype(jnp.int32)
  return interval_lookup(x, midpoints, first)


def nearest_level(x: Array, levels: Array) -> Array:
  """`levels[nearest_index(x, levels)]`, without forming the index."""
  return interval_lookup(x, 0.5 * (levels[1:] + levels[:-1]), levels)


def _quantiles_of_sorted(sorted_x: Array, count: Array, probs: Array) -> Array:
  """Linearly interpolated quantiles `probs` of the first `count` entries of `sorted_x`."""
  pos = probs * jnp.maximum(count - 1, 0).astype(sorted_x.dtype)
  lo = jnp.floor(pos).astype(jnp.int32)
  hi = jnp.minimum(lo + 1, jnp.maximum(count - 1, 0))
  frac = pos - lo
  return sorted_x[lo] * (1 - frac) + sorted_x[hi] * frac


@functools.partial(jax.jit, static_argnames=("k", "iters"))
def lloyd(x: Array, k: int, iters: int = 20, mask: Array | None = None) -> Array:
  """`k` cluster centres of the values of `x` by Lloyd's algorithm, sorted ascending.

  Args:
    x: values, any shape (flattened).
    k: number of clusters (static).
    iters: number of Lloyd iterations after the quantile initialisation (static).
    mask: optional boolean array like `x`; only values where it is True are clustered (e.g. the
      positive part of a post-ReLU activation). With no such value the centres are all zero.

  Returns:
    [k] float32 centres, ascending.
  """
  x = jnp.ravel(x).astype(jnp.float32)
  if mask is None:
    valid = jnp.ones(x.shape, bool)
  else:
    valid = jnp.ravel(mask)
  count = jnp.sum(valid, dtype=jnp.int32)
  # Masked-out values sort to the end (+inf) and are assigned to a dump segment k below.
  sorted_x = jnp.sort(jnp.where(valid, x, jnp.inf))
  in_set = jnp.arange(x.size) < count
  safe_x = jnp.where(in_set, sorted_x, 0.0)
  probs = (jnp.arange(k, dtype=jnp.float32) + 0.5) / k
  centres = _quantiles_of_sorted(safe_x, count, probs)

  def update(_, centres):
    midpoints = 0.5 * (centres[1:] + centres[:-1])
    assign = jnp.searchsorted(midpoints, safe_x, side="left")  # non-decreasing: x is sorted
    assign = jnp.where(in_set, assign, k)
    sums = jax.ops.segment_sum(safe_x, assign, num_segments=k + 1, indices_are_sorted=True)
    counts = jax.ops.segment_sum(jnp.ones_like(safe_x), assign, num_segments=k + 1,
                                 indices_are_sorted=True)
    # An empty cluster keeps its centre (deterministic, and keeps the centres sorted).
    means = sums[:k] / jnp.maximum(counts[:k], 1.0)
    return jnp.where(counts[:k] > 0, means, centres)

  centres = jax.lax.fori_loop(0, iters, update, centres)
  return jnp.where(count > 0, jnp.sort(centres), jnp.zeros_like(centres))


def distortion(x: Array, levels: Array) -> Array:
  """Mean squared error of replacing each value of `x` by its nearest entry of `levels`."""
  q = nearest_level(x, levels)
  return jnp.mean(jnp.square(jnp.asarray(x, jnp.float32) - q))
