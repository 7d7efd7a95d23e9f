"""Accuracy of candidates that differ in one layer: only the network after that layer is computed.

While Goyal et al.'s search (`quantjax.ptq.fixedpoint`) tries points for one layer's weights,
bias or output, everything upstream of that layer is fixed, so every candidate shares

- the activation entering the layer (`INPUT`, while its weights are searched), or
- the layer's own convolution or matmul result before its bias is added (`CONV`, while its bias
  and output are searched: both are applied after it).

`SuffixEvaluator.focus` records that tensor for every validation image once per layer (moving on
from the previous layer's record, so a move costs about one layer), and each candidate is then
evaluated from it: the convolutions and matmuls before the cut are skipped inside the one
compiled program (`lax.switch` on the traced cut index), so a candidate costs the network after
the cut plus the elementwise operations before it.

A candidate also stops counting once it has more wrong predictions than its budget allows (a
`while_loop` over batches; the images are ordered by the float network's margin, smallest first,
so a failing candidate usually stops after one batch). Neither change alters a result: the
arithmetic of every computed layer is that of the full evaluation, and a count that stops early
is only used to say that the candidate fails.

The cut is valid where each layer's input is computed from the previous layer's output alone (a
chain: LeNet-5, the Sequential net). `focus` checks this on every move: the current points
evaluated from the new cut must predict what they predicted before the move (same count and
the same fingerprint of the predicted classes); if not (a skip connection around the cut), the
layer is evaluated in full, and a warning says so.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from quantjax.intercept import QUANT_STATE, QuantPlan, module_path, quantized_apply
from quantjax.intercept.layers import QUANTIZABLE
from quantjax.ptq import fixedpoint

INPUT, CONV = 0, 1  # what is cached at the cut: the layer's input, or its result before the bias
NO_CUT = -1


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


class SuffixEvaluator:
  """`evaluator(quant_state, max_wrong) -> (correct, finished)` from the current cut.

  Args:
    model: the flax model.
    plan: the quantization plan whose 'quant_state' the candidates set.
    layer_paths: the plan's layers in call order (the cut is an index into it).
    variables: the model's other collections ('params', 'batch_stats').
    images, labels: the evaluation set.
    batch_size: images per batch of the loop (the early stop is checked between batches).
    order: a permutation of the images (e.g. smallest float margin first); None keeps theirs.
  """

  def __init__(self, model: nn.Module, plan: QuantPlan, layer_paths: Sequence[str],
               variables: dict[str, Any], images: np.ndarray, labels: np.ndarray, *,
               batch_size: int = 500, order: np.ndarray | None = None):
    if len(images) != len(labels) or not len(images):
      raise ValueError(f"{len(images)} images and {len(labels)} labels: need equal, non-zero")
    if order is not None:
      images, labels = images[order], labels[order]
    self.num_traces = 0  # compilations of the candidate program
    self.num_record_traces = 0  # compilations of the program that moves the cut
    self.num_calls = 0
    self.count = len(images)
    self._layers = {path: i for i, path in enumerate(layer_paths)}
    self._num_layers = len(layer_paths)
    n, pad = len(images), (-len(images)) % batch_size
    shape = (-1, batch_size, *images.shape[1:])
    self._images = jnp.asarray(np.concatenate(
        [images, np.zeros((pad, *images.shape[1:]), images.dtype)]).reshape(shape))
    self._labels = jnp.asarray(np.concatenate(
        [labels, np.zeros(pad, labels.dtype)]).reshape(shape[:2]).astype(np.int32))
    self._mask = jnp.asarray((np.arange(n + pad) < n).reshape(shape[:2]), jnp.int32)
    # Weights of the prediction fingerprint: distinct per image position, small enough for int32.
    self._weights = jnp.asarray((np.arange(n + pad) % 9973 + 1).reshape(shape[:2]), jnp.int32)
    self._variables = variables
    self._apply = quantized_apply(model, plan, training=False)
    self._width = self._cache_width(model, images[:1])
    self._cache = jnp.zeros((*self._images.shape[:2], self._width), jnp.float32)  # [NB, B, width]
    self.cut, self.kind = NO_CUT, INPUT
    self._full_layers: set[tuple[int, int]] = set()  # cuts found invalid (not a chain)
    self._known: dict[Any, tuple[int, int, int, bool]] = {}  # finished counts by configuration
    self._count_fn = jax.jit(self._count)
    self._record_fn = jax.jit(self._record)

  # -- the interceptor that skips the layers before the cut -----------------------------------

  def _interceptor(self, cut, kind, stop, cache, recorded) -> Callable:
    """Swaps each layer's primitive for one that skips, injects from `cache` or computes.

    Entered outside `quantized_apply`'s interceptor, so the quantizing primitive calls this one
    with the quantized operands. `cache`: [B, width] of this batch. `recorded[k]`: (input, result)
    of layer k, for `_record`.
    """

    def interceptor(next_fun, args, kwargs, context):
      module = context.module
      if context.method_name != "__call__" or not isinstance(module, QUANTIZABLE):
        return next_fun(*args, **kwargs)
      k = self._layers.get(module_path(module))
      if k is None:
        return next_fun(*args, **kwargs)
      field = "conv_general_dilated" if isinstance(module, nn.Conv) else "dot_general"
      primitive = getattr(module, field) or getattr(jax.lax, field)

      def cut_primitive(lhs, rhs, *a, **kw):
        def compute(x):
          return primitive(x, rhs, *a, **kw)

        out = jax.eval_shape(compute, lhs)

        def cached(like):  # this layer's slice of the batch's cache
          return cache[:, :math.prod(like.shape[1:])].reshape(like.shape).astype(like.dtype)

        at_cut = jnp.where(kind == INPUT, 2, 3)
        branch = jnp.where(k < cut, 0, jnp.where(k == cut, at_cut, 1))
        branch = jnp.where(k > stop, 0, branch)
        y = jax.lax.switch(branch, [
            lambda: jnp.zeros(out.shape, out.dtype),  # before the cut (or past the stop)
            lambda: compute(lhs),  # after the cut
            lambda: compute(cached(lhs)),  # at the cut, from its cached input
            lambda: cached(out),  # at the cut, its cached result
        ])
        recorded[k] = (lhs, y)
        return y

      original = getattr(module, field)
      object.__setattr__(module, field, cut_primitive)
      try:
        return next_fun(*args, **kwargs)
      finally:
        object.__setattr__(module, field, original)

    return interceptor

  def _logits(self, variables, quant_state, cut, kind, stop, cache, images, recorded):
    with nn.intercept_methods(self._interceptor(cut, kind, stop, cache, recorded)):
      return self._apply({**variables, QUANT_STATE: quant_state}, images, train=False)

  def _cache_width(self, model, image) -> int:
    """The largest per-image input or result of any layer: the cache's width."""
    sizes = []

    def interceptor(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.method_name == "__call__" and isinstance(context.module, QUANTIZABLE):
        sizes.extend([math.prod(args[0].shape[1:]), math.prod(out.shape[1:])])
      return out

    def shapes(x):
      with nn.intercept_methods(interceptor):
        return model.apply(self._variables, x, train=False)

    jax.eval_shape(shapes, jnp.asarray(image))
    return max(sizes)

  # -- the two compiled programs ---------------------------------------------------------------

  def _data(self) -> tuple[jax.Array, ...]:
    """The evaluation set, passed to the programs as arguments (not baked in as constants)."""
    return self._images, self._labels, self._mask, self._weights

  def _count(self, variables, quant_state, cut, kind, cache, max_wrong, data):
    """(correct, wrong, fingerprint, finished) of the batches counted before `max_wrong` passed."""
    self.num_traces += 1  # runs only while tracing
    images, labels, masks, weights = data
    num_batches = images.shape[0]

    def body(carry):
      b, correct, wrong, fingerprint = carry
      logits = self._logits(variables, quant_state, cut, kind, self._num_layers, cache[b],
                            images[b], {})  # [B, num_classes]
      predicted = jnp.argmax(logits, -1).astype(jnp.int32)
      mask = masks[b]
      right = jnp.sum((predicted == labels[b]).astype(jnp.int32) * mask)
      fingerprint += jnp.sum(predicted * weights[b] * mask)
      return b + 1, correct + right, wrong + jnp.sum(mask) - right, fingerprint

    def going(carry):
      b, _, wrong, _ = carry
      return (b < num_batches) & (wrong <= max_wrong)

    zero = jnp.zeros((), jnp.int32)
    b, correct, wrong, fingerprint = jax.lax.while_loop(going, body, (zero, zero, zero, zero))
    return correct, wrong, fingerprint, b == num_batches

  def _record(self, variables, quant_state, cut, kind, cache, record_at, record_kind, images):
    """[NB, B, width]: layer `record_at`'s input or result for every image, from the cut."""
    self.num_record_traces += 1

    def one(b):
      recorded: dict[int, tuple[jax.Array, jax.Array]] = {}
      self._logits(variables, quant_state, cut, kind, record_at, cache[b], images[b], recorded)
      batch = images.shape[1]

      def flat(t):
        t = t.reshape(batch, -1).astype(jnp.float32)
        return jnp.pad(t, ((0, 0), (0, self._width - t.shape[1])))

      branches = [functools.partial(flat, recorded[k][j])
                  for k in range(self._num_layers) for j in (INPUT, CONV)]
      return jax.lax.switch(2 * record_at + record_kind, branches)

    return jax.lax.map(one, jnp.arange(images.shape[0]))

  # -- the interface ---------------------------------------------------------------------------

  def evaluate(self, quant_state, max_wrong: int | None = None,
               key: Any = None) -> tuple[int, int, int, bool]:
    """(correct, wrong, fingerprint, finished) of `quant_state` from the current cut.

    Counting stops once more than `max_wrong` predictions are wrong (`finished` is then False
    and `correct` counts only the batches seen); None counts every image. A finished count is
    remembered under `key` (hashable, naming the configuration) for `focus`'s check.
    """
    self.num_calls += 1
    limit = self.count if max_wrong is None else max_wrong
    cut = NO_CUT if (self.cut, self.kind) in self._full_layers else self.cut
    correct, wrong, fingerprint, finished = jax.device_get(self._count_fn(
        self._variables, quant_state, np.int32(cut), np.int32(self.kind), self._cache,
        np.int32(limit), self._data()))
    result = int(correct), int(wrong), int(fingerprint), bool(finished)
    if finished and key is not None:
      self._known[key] = result
    return result

  def focus(self, quant_state, layer: int, kind: int, key: Any = None) -> None:
    """Moves the cut to `layer` (`INPUT` or `CONV`), recording from the current cut if upstream.

    `quant_state` holds the current points (every layer before `layer` as it will stay); `key`
    names them, so a count `evaluate` remembered serves as the check's reference.
    """
    if (layer, kind) == (self.cut, self.kind):
      return
    before = self._known.get(key) if key is not None else None
    if before is None:
      before = self.evaluate(quant_state)
    upstream = self.cut < layer or (self.cut == layer and (self.kind, kind) == (INPUT, CONV))
    cut, cut_kind = (self.cut, self.kind) if upstream else (NO_CUT, INPUT)
    self._cache = self._record_fn(self._variables, quant_state, np.int32(cut),
                                  np.int32(cut_kind), self._cache, np.int32(layer),
                                  np.int32(kind), self._images)
    self.cut, self.kind = layer, kind
    after = self.evaluate(quant_state, key=key)
    if after != before:
      logging.warning("suffix evaluation: layer %d is not reached through the previous layers "
                      "alone (%s from the cut, %s in full); it is evaluated in full", layer,
                      after[:3], before[:3])
      self._full_layers.add((layer, kind))
      if key is not None:
        self._known[key] = before


class PointAccuracy:
  """The search's view of a `SuffixEvaluator`: `accuracy(points, passing)`, `focus(points, key)`.

  Points are `fixedpoint.Point`s by (layer path, component), as `fixedpoint.search` passes them.
  """

  def __init__(self, evaluator: SuffixEvaluator, base: dict[str, Any],
               layer_paths: Sequence[str]):
    self.evaluator = evaluator
    self._base = base  # 'quant_state' of the plan; the points overwrite its bits and F
    self._index = {path: i for i, path in enumerate(layer_paths)}

  @classmethod
  def build(cls, model: nn.Module, plan: QuantPlan, layer_paths: Sequence[str],
            variables: dict[str, Any], base: dict[str, Any], images: np.ndarray,
            labels: np.ndarray, *, batch_size: int) -> PointAccuracy:
    """Over the images ordered by the float network's margin, misclassified and closest first."""
    margins = float_margins(model, variables, images, labels, batch_size)
    order = np.argsort(margins, kind="stable")
    return cls(SuffixEvaluator(model, plan, layer_paths, variables, images, labels,
                               batch_size=batch_size, order=order), base, layer_paths)

  @property
  def num_traces(self) -> int:
    return self.evaluator.num_traces

  def accuracy(self, points, passing: Callable[[float], bool] | None = None) -> float:
    """The accuracy at `points`; with `passing`, any failing accuracy once it cannot pass."""
    n = self.evaluator.count
    max_wrong = None
    if passing is not None:  # the fewest correct predictions that pass, by bisection
      lo, hi = 0, n + 1
      while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if passing(mid / n) else (mid + 1, hi)
      max_wrong = n - lo  # -1 when nothing passes
    correct, wrong, _, finished = self.evaluator.evaluate(
        fixedpoint.quant_state(self._base, points), max_wrong, key=_key(points))
    # Stopped early: at most n - wrong correct, fewer than pass; a failing accuracy all the same.
    return correct / n if finished else (n - wrong) / n

  def focus(self, points, key: tuple[str, str]) -> None:
    """Moves the cut to the layer of `key`: its input for weights, its result for bias/output."""
    path, component = key
    kind = INPUT if component == "weight" else CONV
    self.evaluator.focus(fixedpoint.quant_state(self._base, points), self._index[path], kind,
                         key=_key(points))


def _key(points) -> tuple:
  return tuple(sorted(points.items()))
