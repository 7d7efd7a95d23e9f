"""Accuracy of candidates that differ in one layer: from that layer on, several at once.

While Goyal et al.'s search (`quantjax.ptq.fixedpoint`) tries points for one tensor, everything
upstream of it is fixed. The *cut* is the convolution or matmul result (before the bias) of the
layer just before the candidates' first difference: of layer k-1 while layer k's weights are
searched (the images for the first layer), of layer k itself while its bias and output are.
`SuffixEvaluator.move` records the cut for every validation image from the previous one (about
one layer's work), and candidates are counted from it:

- suffix: the network is traced once, as a jitted function in which every layer's result can be
  replaced by a given tensor under a traced mask; each cut is a `lax.switch` branch that calls it
  with a constant mask, so XLA folds the mask and removes everything upstream of the cut as dead
  code (what a skip connection around the cut still reads is computed from the images: the
  counts stay exact, only slower);
- early stop: a candidate stops counting once it has more wrong predictions than its budget
  allows (the images are ordered by the float network's margin, smallest first, so a failing
  candidate usually stops within its first few dozen images);
- lanes: up to `MAX_LANES` candidates per call (the search's `lookahead` sends a step's points
  together), `vmap`ped over `slots` candidate states; each iteration of the counting loop gives
  every slot `rows // slots` images of a lane still counting, so a lane that stops frees its
  slots at once and every iteration computes a full batch. The searched layer's convolution,
  whose kernel differs per slot, runs slot by slot (`lax.map`) rather than as the grouped
  convolution `vmap` would make of it (several times slower on CPU). The default is one slot:
  on a 2-core CPU the whole search on the Sequential net took 507 s with one slot against 709 s
  with 8 slots of `rows / 8` (`results/ptq_search_time.md`); several slots can pay only where
  one lane's batch does not fill the device.
- devices: each iteration's images are split over the local devices (`shard_map`), every device
  computing its share from its own copy of the cache; a record splits the images likewise and
  gathers the shares into every copy. XLA's CPU backend runs a convolution on one core, so on a
  CPU the search uses every core only with one fake device per core
  (`XLA_FLAGS=--xla_force_host_platform_device_count=<cores>`, which `quantjax.ptq.run` sets for
  the PTQ pipeline when unset). An image's logits do not depend on which device, or with which
  others, it is computed: the counts are those of one device.

Every computed layer does the arithmetic of the full evaluation on the same images; only which
images share a batch changes.
"""

from __future__ import annotations

import collections
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from quantjax.intercept import QUANT_STATE, QuantPlan, module_path, quantized_apply
from quantjax.intercept.layers import QUANTIZABLE, call_with_product, product_field
from quantjax.ptq import fixedpoint

IMAGES = -1  # the cut before the first layer: candidates are counted from the images
MAX_LANES = 16  # candidates per call: a whole diagonal (16 bits down to 1)
# A lane's points, [3, 2] rows of (bits, F): the weights of the layer after the cut, then the
# bias and the output of the cut's own layer: (component, layer offset from the cut).
LANE_LEAVES = (("weight", 1), ("bias", 0), ("output", 0))


def float_margins(model: nn.Module, variables: dict[str, Any], images: np.ndarray,
                  labels: np.ndarray, batch_size: int) -> np.ndarray:
  """The float network's logit margin of each image: `logit[label] - max other logit`."""

  @jax.jit
  def margin(x, y):
    logits = model.apply(variables, x, train=False)  # [B, num_classes]
    true = jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
    other = jnp.max(jnp.where(jax.nn.one_hot(y, logits.shape[-1]) > 0, -jnp.inf, logits), -1)
    return true - other

  out = [np.asarray(margin(jnp.asarray(images[i:i + batch_size]),
                           jnp.asarray(labels[i:i + batch_size])))
         for i in range(0, len(images), batch_size)]
  return np.concatenate(out)


def _slotwise(primitive: Callable, *args, **kwargs) -> Callable:
  """`primitive(lhs, rhs, *args, **kwargs)` whose vmap over both operands maps, not groups."""

  def call(lhs, rhs):
    return primitive(lhs, rhs, *args, **kwargs)

  @jax.custom_batching.custom_vmap
  def apply(lhs, rhs):
    return call(lhs, rhs)

  @apply.def_vmap
  def _(axis_size, in_batched, lhs, rhs):
    del axis_size
    lhs_batched, rhs_batched = in_batched
    if lhs_batched and rhs_batched:  # one kernel per slot: slot by slot
      return jax.lax.map(lambda pair: call(*pair), (lhs, rhs)), True
    if not (lhs_batched or rhs_batched):
      return call(lhs, rhs), False
    axes = (0 if lhs_batched else None, 0 if rhs_batched else None)
    return jax.vmap(call, in_axes=axes)(lhs, rhs), True

  return apply


class SuffixEvaluator:
  """Counts of candidates that differ from a state in the layers around the cut.

  `move(state, cut)` records the cut (a layer index: its result before the bias; `IMAGES`:
  nothing); `evaluate(state, lane_points, max_wrong)` counts up to `MAX_LANES` candidates at
  once, each `state` with `lane_points` (see `LANE_LEAVES`) in place.

  Args:
    model: the flax model.
    plan: the quantization plan whose 'quant_state' the candidates set (fixed-point tensors).
    layer_paths: the plan's layers in call order (a cut is an index into it).
    variables: the model's other collections ('params', 'batch_stats').
    images, labels: the evaluation set.
    rows: images per iteration of the counting loop (over all slots) and per batch of a record.
    slots: candidate states evaluated side by side (`vmap`); divides `rows`. 1 (the default):
      one lane at a time, over all `rows` images.
    order: a permutation of the images (e.g. smallest float margin first); None keeps theirs.
    devices: local devices that share each slot's images; None: as many as there are, less
      until they divide `rows // slots`.
  """

  def __init__(self, model: nn.Module, plan: QuantPlan, layer_paths: Sequence[str],
               variables: dict[str, Any], images: np.ndarray, labels: np.ndarray, *,
               rows: int = 256, slots: int = 1, order: np.ndarray | None = None,
               devices: int | None = None):
    if len(images) != len(labels) or not len(images):
      raise ValueError(f"{len(images)} images and {len(labels)} labels: need equal, non-zero")
    if slots < 1 or rows % slots:
      raise ValueError(f"slots={slots} must be positive and divide rows={rows}")
    local = jax.local_devices()
    if devices is None:
      devices = max(d for d in range(1, len(local) + 1) if (rows // slots) % d == 0)
    if not 1 <= devices <= len(local) or (rows // slots) % devices:
      raise ValueError(f"devices={devices} must be within 1..{len(local)} (the local devices) "
                       f"and divide rows // slots = {rows // slots}")
    self.devices = devices
    self._mesh = Mesh(np.asarray(local[:devices]), ("images",))
    replicated = NamedSharding(self._mesh, P())
    if order is not None:
      images, labels = images[order], labels[order]
    self.num_traces = 0  # compilations of the candidate program
    self.num_record_traces = 0  # compilations of the program that moves the cut
    self.num_calls = 0  # candidate-program calls
    # For `work`: images counted and candidates counted whole, by cut; records, by layer.
    self.counted, self.counted_whole, self.recorded = (collections.Counter() for _ in range(3))
    self.count = len(images)
    self._layers = {path: i for i, path in enumerate(layer_paths)}
    self._paths = list(layer_paths)
    self._rows, self._slots = rows, slots
    n_pad = -(-len(images) // (rows * devices)) * rows * devices  # records: `rows` per device
    pad = n_pad - len(images)
    # Every device holds the images, the labels, the variables and the cache whole.
    self._images = jax.device_put(np.concatenate(
        [images, np.zeros((pad, *images.shape[1:]), images.dtype)]), replicated)  # [N', H, W, C]
    self._labels = jax.device_put(
        np.concatenate([labels, np.zeros(pad, labels.dtype)]).astype(np.int32), replicated)
    self._variables = jax.device_put(variables, replicated)
    self._apply = quantized_apply(model, plan, training=False)
    self._sizes = self._result_sizes(model, images[:1])  # per layer: per-image result size
    self._cache = jax.device_put(jnp.zeros((n_pad, max(self._sizes)), jnp.float32),
                                 replicated)  # [N', width]
    self.cut = None  # no cut recorded yet
    self._network = jax.jit(self._network_impl)
    self._count_fn = jax.jit(self._count)
    self._record_fn = jax.jit(self._record, donate_argnums=(2,), out_shardings=replicated)

  # -- the network with injectable layer results -------------------------------------------

  def _network_impl(self, variables, state, images, injections, inject):
    """(every layer's computed result, logits) with layer k's result replaced by
    `injections[k]` [B, size_k] where `inject[k]` (a traced bool; constant at each call site,
    so XLA keeps only one of the two)."""
    computed: list[jax.Array | None] = [None] * len(self._paths)

    def interceptor(next_fun, args, kwargs, context):
      module = context.module
      if context.method_name != "__call__" or not isinstance(module, QUANTIZABLE):
        return next_fun(*args, **kwargs)
      k = self._layers.get(module_path(module))
      if k is None:
        return next_fun(*args, **kwargs)
      field = product_field(module)
      primitive = getattr(module, field) or getattr(jax.lax, field)

      def cut_primitive(lhs, rhs, *a, **kw):  # called with the quantized operands
        y = _slotwise(primitive, *a, **kw)(lhs, rhs)
        computed[k] = y
        return jnp.where(inject[k], injections[k].reshape(y.shape).astype(y.dtype), y)

      return call_with_product(module, cut_primitive, next_fun, args, kwargs)

    # Entered outside `quantized_apply`'s interceptor, so the quantizing primitive calls
    # `cut_primitive` with the quantized operands.
    with nn.intercept_methods(interceptor):
      logits = self._apply({**variables, QUANT_STATE: state}, images, train=False)
    return computed, logits

  def _from_cut(self, variables, state, images, cut: int, rows):
    """(computed results, logits) of `images` with the cut's result replaced by `rows`."""
    batch = images.shape[0]
    injections = [rows if k == cut else jnp.zeros((batch, size), jnp.float32)
                  for k, size in enumerate(self._sizes)]
    inject = jnp.asarray(np.arange(len(self._sizes)) == cut)
    return self._network(variables, state, images, injections, inject)

  def _result_sizes(self, model, image) -> list[int]:
    """Per-image size of each layer's result: [L]."""
    sizes = [0] * len(self._paths)

    def interceptor(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      module = context.module
      if context.method_name == "__call__" and isinstance(module, QUANTIZABLE):
        k = self._layers.get(module_path(module))
        if k is not None:
          sizes[k] = math.prod(out.shape[1:])
      return out

    def shapes(x):
      with nn.intercept_methods(interceptor):
        return model.apply(self._variables, x, train=False)

    jax.eval_shape(shapes, jnp.asarray(image))
    return sizes

  def _lane_state(self, state, cut: int, points) -> dict:
    """`state` with the leaves of `LANE_LEAVES` around `cut` set from `points` [3, 2]."""
    flat = traverse_util.flatten_dict(state, sep="/")
    for row, (component, offset) in enumerate(LANE_LEAVES):
      k = cut + offset
      if 0 <= k < len(self._paths):
        for j, name in enumerate(("bits", "fractional_bits")):
          leaf = f"{self._paths[k]}/{fixedpoint.PREFIX[component]}_{name}"
          if leaf in flat:
            flat[leaf] = points[row, j]
    return traverse_util.unflatten_dict(flat, sep="/")

  # -- the two compiled programs ---------------------------------------------------------------

  def _count(self, variables, state, lane_points, num_lanes, cut, max_wrong, cache, images,
             labels):
    """(correct, wrong, finished) per lane [MAX_LANES], counting from cut `cut` (+1: a branch).

    `lane_points` [MAX_LANES, 3, 2]: each lane's points (`LANE_LEAVES`); lanes from `num_lanes`
    on are unused. A lane stops once it has more than `max_wrong` wrong predictions.
    """
    self.num_traces += 1  # runs only while tracing
    n, slots, n_pad = self.count, self._slots, images.shape[0]
    per_slot = self._rows // slots

    def branch(c):
      size = self._sizes[c] if c != IMAGES else 0

      def logits(shared, slot_points, index):  # [S, 3, 2], [S, R'] -> [S, R', num_classes]
        variables, state, cache, images = shared

        def one(points, rows, x):
          return self._from_cut(variables, self._lane_state(state, c, points), x, c, rows)[1]

        # A slot's images are consecutive rows: sliced, not gathered.
        count = index.shape[1]

        def take(array, width):
          return jnp.stack([jax.lax.dynamic_slice(array, (index[s, 0],) + (0,) * (array.ndim - 1),
                                                  (count, *width)) for s in range(slots)])

        rows = take(cache, (size,)) if c != IMAGES else jnp.zeros(index.shape + (0,))
        x = take(images, images.shape[1:])
        if slots == 1:  # one lane: its state unbatched, every convolution XLA's own
          return one(slot_points[0], rows[0], x[0])[None]
        return jax.vmap(one)(slot_points, rows, x)

      return logits

    # Each device computes the logits of its share of every slot's images (R' = R/S/devices);
    # what every device reads whole is passed in replicated (a closure could not be). One
    # `shard_map` per branch: inside one, the switch's branches would all keep the layers above
    # their cut.
    shard = functools.partial(jax.shard_map, mesh=self._mesh,
                              in_specs=(P(), P(), P(None, "images")),
                              out_specs=P(None, "images"))
    branches = [shard(branch(c)) for c in range(IMAGES, len(self._sizes))]

    def shard_logits(cut, shared, slot_points, index):
      return jax.lax.switch(cut, branches, shared, slot_points, index)

    shared = (variables, state, cache, images)

    def body(carry):
      position, correct, wrong, going = carry
      # Slots to lanes still counting, in lane order, round robin; each slot takes the lane's
      # next `per_slot` images (a lane with several slots takes consecutive chunks).
      active = jnp.argsort(jnp.logical_not(going), stable=True)
      live = jnp.maximum(jnp.sum(going), 1)
      slot = jnp.arange(slots)
      lane = active[slot % live]  # [S]
      start = position[lane] + (slot // live) * per_slot
      # Past the padded end (a slot beyond its lane's last images) the slice starts earlier;
      # rows before the slot's own start do not count.
      first = jnp.minimum(start, n_pad - per_slot)
      index = first[:, None] + jnp.arange(per_slot)  # [S, R/S]: consecutive rows
      valid = (index >= start[:, None]) & (index < n) & going[lane][:, None]
      out = shard_logits(cut, shared, lane_points[lane], index)  # [S, R/S, num_classes]
      right = (jnp.argmax(out, -1) == labels[index]) & valid
      correct = correct.at[lane].add(jnp.sum(right, 1, dtype=jnp.int32))
      wrong = wrong.at[lane].add(jnp.sum(valid & ~right, 1, dtype=jnp.int32))
      taken = jnp.zeros(MAX_LANES, jnp.int32).at[lane].add(going[lane].astype(jnp.int32))
      position = position + taken * per_slot
      going = going & (position < n) & (wrong <= max_wrong)
      return position, correct, wrong, going

    zeros = jnp.zeros(MAX_LANES, jnp.int32)
    start = (zeros, zeros, zeros, jnp.arange(MAX_LANES) < num_lanes)
    position, correct, wrong, _ = jax.lax.while_loop(lambda carry: jnp.any(carry[3]), body,
                                                     start)
    return correct, wrong, position >= n

  def _record(self, variables, state, cache, target, images):
    """The cache at layer `target`'s result, from the cache at `target - 1` (or the images)."""
    self.num_record_traces += 1
    rows = self._rows

    def branch(t):
      size_in, size_out = self._sizes[t - 1] if t > 0 else 0, self._sizes[t]

      # Each device records its share of the rows, `rows` images at a time; the shares are
      # then gathered into every device's whole cache.
      def share(shared, cache, images):  # [N'/D, width], [N'/D, H, W, C] -> [N'/D, size_out]
        variables, state = shared

        def one(b):
          x = jax.lax.dynamic_slice_in_dim(images, b * rows, rows)
          cached = jax.lax.dynamic_slice(cache, (b * rows, 0), (rows, size_in))
          computed, _ = self._from_cut(variables, state, x, t - 1, cached)
          return computed[t].reshape(rows, size_out).astype(jnp.float32)

        return jax.lax.map(one, jnp.arange(cache.shape[0] // rows)).reshape(-1, size_out)

      recorded = jax.shard_map(share, mesh=self._mesh, in_specs=(P(), P("images"), P("images")),
                               out_specs=P("images"))

      def record(cache):
        out = recorded((variables, state), cache, images)  # [N', size_out]
        return jax.lax.dynamic_update_slice(cache, out, (0, 0))

      return record

    return jax.lax.switch(target, [branch(t) for t in range(len(self._sizes))], cache)

  # -- the interface ---------------------------------------------------------------------------

  def move(self, state, cut: int) -> None:
    """Records layer `cut`'s result under `state` (`IMAGES`: nothing to record).

    From the current cut if it is upstream, else from the images; one record (about one
    layer's work) per layer stepped over.
    """
    if not IMAGES <= cut < len(self._sizes):
      raise ValueError(f"cut={cut} is out of range [{IMAGES}, {len(self._sizes)})")
    here = self.cut if self.cut is not None and self.cut < cut else IMAGES
    for t in range(here + 1, cut + 1):
      self._cache = self._record_fn(self._variables, state, self._cache, np.int32(t),
                                    self._images)
      self.recorded[t] += 1
    self.cut = cut

  def evaluate(self, state, lane_points: np.ndarray,
               max_wrong: int | None = None) -> list[tuple[int, int, bool]]:
    """(correct, wrong, finished) per candidate, counted from the current cut.

    Args:
      state: the 'quant_state' the cut was recorded under, except around the cut.
      lane_points: [K, 3, 2] each candidate's points (`LANE_LEAVES`).
      max_wrong: a candidate stops counting once more than this many predictions are wrong
        (`finished` is then False and `correct` counts only the images seen); None counts all.
    """
    if self.cut is None:
      raise ValueError("no cut recorded: call move() first")
    limit = self.count if max_wrong is None else max_wrong
    out = []
    for i in range(0, len(lane_points), MAX_LANES):
      chunk = np.asarray(lane_points[i:i + MAX_LANES], np.float32)
      lanes = np.zeros((MAX_LANES, 3, 2), np.float32)
      lanes[:len(chunk)] = chunk
      self.num_calls += 1
      correct, wrong, finished = jax.device_get(self._count_fn(
          self._variables, state, lanes, np.int32(len(chunk)), np.int32(self.cut - IMAGES),
          np.int32(limit), self._cache, self._images, self._labels))
      out += [(int(c), int(w), bool(f)) for c, w, f in
              zip(correct, wrong, finished, strict=True)][:len(chunk)]
    self.counted[self.cut] += sum(c + w for c, w, _ in out)
    self.counted_whole[self.cut] += sum(f for _, _, f in out)
    return out

  def work(self, macs: Sequence[int]) -> dict[str, int]:
    """Multiply-adds done so far (padding rows left out), from each layer's per-image `macs`:
    'counted' of every image counted (from its cut on), 'whole' of the candidates counted on
    every image (those that could not stop early), 'records' of moving the cut."""
    if len(macs) != len(self._paths):
      raise ValueError(f"{len(macs)} layers' multiply-adds for {len(self._paths)} layers")
    after = {cut: sum(macs[cut + 1:]) for cut in range(IMAGES, len(macs))}  # the suffix's
    return {"counted": sum(n * after[cut] for cut, n in self.counted.items()),
            "whole": sum(n * self.count * after[cut] for cut, n in self.counted_whole.items()),
            "records": sum(n * self.count * macs[t] for t, n in self.recorded.items())}


class PointAccuracy:
  """The search's view of a `SuffixEvaluator`: accuracies of configurations of `Point`s.

  `focus(points, key)` moves the cut to suit `key` = (layer path, component); then
  `accuracies(configurations, passing)` counts configurations that differ from `points` only
  in that tensor (or the others around the cut, `LANE_LEAVES`) together.

  Args:
    evaluator: the suffix evaluator.
    base: 'quant_state' of the plan; the points overwrite its bits and F.
    layer_paths: the plan's layers in call order.
    stop_early: pass `passing` on as a limit of wrong predictions (else every image counts).
  """

  def __init__(self, evaluator: SuffixEvaluator, base: dict[str, Any],
               layer_paths: Sequence[str], *, stop_early: bool = True):
    self.evaluator = evaluator
    self._base = base
    self._index = {path: i for i, path in enumerate(layer_paths)}
    self._paths = list(layer_paths)
    self._stop_early = stop_early
    self._recorded: dict[tuple[str, str], fixedpoint.Point] | None = None  # under the cut

  @classmethod
  def build(cls, model: nn.Module, plan: QuantPlan, layer_paths: Sequence[str],
            variables: dict[str, Any], base: dict[str, Any], images: np.ndarray,
            labels: np.ndarray, *, batch_size: int, stop_early: bool = True,
            **options) -> PointAccuracy:
    """Over the images ordered by the float network's margin, misclassified and closest first;
    `options` go to `SuffixEvaluator` (`rows`, `slots`, `devices`)."""
    order = np.argsort(float_margins(model, variables, images, labels, batch_size), kind="stable")
    return cls(SuffixEvaluator(model, plan, layer_paths, variables, images, labels,
                               order=order, **options), base, layer_paths,
               stop_early=stop_early)

  @property
  def num_traces(self) -> int:
    return self.evaluator.num_traces

  def focus(self, points: Mapping[tuple[str, str], fixedpoint.Point],
            key: tuple[str, str]) -> None:
    """Moves the cut to the result of the layer before `key`'s (weights; `IMAGES` for the
    first layer) or of `key`'s own layer (bias, output)."""
    path, component = key
    cut = self._index[path] - (component == "weight")
    self.evaluator.move(fixedpoint.quant_state(self._base, points), cut)
    self._recorded = dict(points)

  def accuracies(self, configurations: Sequence[Mapping[tuple[str, str], fixedpoint.Point]],
                 passing: Callable[[float], bool] | None = None) -> list[float]:
    """The accuracy of each configuration; with `passing` (and `stop_early`), any failing
    accuracy for one that cannot pass."""
    if self._recorded is None:  # nothing chosen yet: count from the images
      self.focus(configurations[0], (self._paths[0], "weight"))
    cut = self.evaluator.cut
    lane_keys = [(self._paths[cut + offset], component) if 0 <= cut + offset < len(self._paths)
                 else None for component, offset in LANE_LEAVES]
    first = configurations[0]
    upstream = [key for key in first if self._index[key[0]] < cut or (
        self._index[key[0]] == cut and key[1] == "weight")]
    self._check(first, upstream, self._recorded, "the cut was recorded with")
    others = [key for key in first if key not in lane_keys]
    rows = []
    for config in configurations:
      self._check(config, others, first, "the first configuration has")
      rows.append([[config[key].bits, config[key].frac] if key in config else [0, 0]
                   for key in lane_keys])
    n = self.evaluator.count
    max_wrong = None
    if passing is not None and self._stop_early:  # the fewest correct that pass, by bisection
      lo, hi = 0, n + 1
      while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if passing(mid / n) else (mid + 1, hi)
      max_wrong = n - lo  # -1 when nothing passes
    state = fixedpoint.quant_state(self._base, first)
    counts = self.evaluator.evaluate(state, np.asarray(rows, np.float32), max_wrong)
    # Stopped early: at most n - wrong correct, fewer than pass; a failing accuracy all the same.
    return [correct / n if finished else (n - wrong) / n for correct, wrong, finished in counts]

  @staticmethod
  def _check(config, keys, reference, what: str) -> None:
    """Raises unless `config` equals `reference` at every key of `keys`."""
    for key in keys:
      if config.get(key) != reference.get(key):
        raise ValueError(f"{key} is {config.get(key)}, but {what} {reference.get(key)}: only "
                         "the tensors around the cut may differ (focus() on the tensor first)")
