"""Runs an exported integer graph with jax.lax integer ops, as a fixed-point accelerator would.

Every node's arithmetic is integer (see quantjax.export.graph for the node semantics). The MAC of
a conv/dense layer is exact: the operands are the decoded integer values (int8 where they fit,
unsigned 8-bit activations shifted onto int8 with the shift's sum added back, else int16/int32)
with `preferred_element_type=int32` (on a CPU, 'auto' takes integer operands where the whole
graph ran faster on them, `lowering.integer_faster`: int8 from 32 input channels on, as training's
integer products, and an image's convolution), an int64 path where the bound
`K·max|a|·max|w|` reaches 2^31, or float32 where that bound is below 2^24 (`Accelerator.mac`).
An integer convolution runs as `lax.conv_general_dilated` where the backend lowers integer
convolutions (CPU, TPU), else as its patches times an integer matrix product (`conv='patches'`;
XLA's GPU backend lowers only cuDNN's int8 convolutions with an s8 or f32 result); both give the
same integers. Where the code widths prove a sum fits the accumulator (K·max|a|·max|w| plus
max|bias|; for a residual add, the magnitude bounds carried through the graph), it is formed in
int32 and only its max |s| is counted, as nothing can overflow (max |s| from each channel's
largest and smallest sum). The accumulator model (width, saturate or wrap, overflow count) and
the requantization (`r·m + o`, right shift with the run's rounding mode, or, onto non-uniform
levels, the integer thresholds on `r` that `m`, `shift`, `o` and the level table imply for that
rounding mode, computed once per graph) follow. A rescale runs in float64 where the magnitude
bounds prove `|r·m + o| + 2^shift <= 2^53`, so every step is exact, else in int64 (jax x64 is
enabled inside the emulator only); both give the same integers. `Emulator.outputs` returns the
integers alone, without the overflow and max |s| counts.

A call's images are split evenly over the emulator's devices (default: every local device; with
one CPU device per core, `quantjax.train.sharding.cpu_device_per_core`, each core runs its share:
XLA's int8 convolutions use one core each), the constants held whole on every device; when the
count does not divide, the remaining images (fewer than the devices) run whole on every device.
The integers and counts do not depend on the split.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from quantjax import int8
from quantjax.export.graph import Graph
from quantjax.export.rescale import level_thresholds
from quantjax.int8 import INT8_MAX, INT8_MIN
from quantjax.intsim.accelerator import Accelerator
from quantjax.intsim.bounds import decode_weight, decoded_range, mac_bound, value_ranges
from quantjax.intsim.lowering import conv_lowering, conv_patches, integer_faster, padded_outputs

_DN = ("NHWC", "HWIO", "NHWC")


def _device(array, dtype, sharding=None) -> jax.Array:
  """`array` as `dtype` on the device (or placed as `sharding` says), converted by NumPy and
  placed by `jax.device_put`: `jnp.asarray` of a NumPy array compiles and keeps a program per
  shape (about 1.4 MiB each with jax 0.10; 21 MiB of the emulator's set-up on LeNet-5)."""
  return jax.device_put(np.asarray(array, dtype=dtype), sharding)


def _small_dtype(lo: int, hi: int):
  for dt in (jnp.int8, jnp.int16, jnp.int32):
    info = jnp.iinfo(dt)
    if info.min <= lo and hi <= info.max:
      return dt
  return jnp.int64


def _int8_offset(lo: int, hi: int, w: np.ndarray) -> int | None:
  """The shift `o` that puts activations in [lo, hi] onto int8 (a - o), if the kernel is int8 too.

  `Σ a·w = Σ (a - o)·w + o·Σ w` over each window (zero padding: the second term is the product of
  an all-ones image with the same padding), both sums in int32. None: no int8 form.
  """
  if w.size == 0 or w.min() < INT8_MIN or w.max() > INT8_MAX or hi - lo > INT8_MAX - INT8_MIN:
    return None
  offset = int8.shift(lo, hi)
  if offset == 0:
    return 0
  per_channel = np.sum(np.abs(w.reshape(-1, w.shape[-1])), axis=0)
  return offset if abs(offset) * int(np.max(per_channel)) < 2**31 else None


class Emulator:
  """A jitted integer run of `graph` on uint8 images under one `Accelerator` model."""

  def __init__(self, graph: Graph, accel: Accelerator | None = None, conv: str = "auto",
               devices: Sequence[jax.Device] | None = None):
    """`conv`: how integer convolutions run (`conv_lowering`); the integers are the same.
    `devices`: those a call's images are split over (default: every local device)."""
    self.graph = graph
    self.accel = accel or Accelerator()
    conv_lowering(conv)  # a valid name, before any work
    self.devices = list(jax.local_devices() if devices is None else devices)
    if not self.devices:
      raise ValueError("devices=[]: the emulator needs at least one device")
    mesh = Mesh(np.asarray(self.devices), ("batch",))
    self._split, self._whole = NamedSharding(mesh, P("batch")), NamedSharding(mesh, P())
    self._put = functools.partial(_device, sharding=self._whole)  # constants: on every device
    self.ranges = value_ranges(graph)
    self.plan: dict[str, dict[str, Any]] = {}
    consts: dict[str, Any] = {}
    with jax.enable_x64(True):
      for n in graph.nodes:
        out = n["out"]
        if n["op"] in ("conv", "dense"):
          w = decode_weight(graph, n)
          bound = mac_bound(graph, n, self.ranges, w)
          lo, hi = decoded_range(graph, n, self.ranges)
          offset = _int8_offset(lo, hi, w)
          path = self._mac_path(bound, offset is not None, w.shape[-2], n["op"])
          self.plan[out] = {"bound": bound, "path": path}
          if path == "f32":
            consts[f"{out}.w"] = self._put(w, np.float32)
          elif path == "int":
            dt = jnp.promote_types(_small_dtype(int(w.min()), int(w.max())),
                                   _small_dtype(lo, hi))
            if offset is not None:  # int8 operands: the activations shifted onto int8
              dt = jnp.dtype(jnp.int8)
              self.plan[out]["offset"] = offset
            self.plan[out]["dtype"] = str(dt)
            if n["op"] == "conv":
              lowering = conv_lowering(conv, int8_operands=dt == jnp.int8,
                                       in_channels=w.shape[-2])
              self.plan[out]["conv"] = lowering
              width = padded_outputs(w.shape[-1], lowering, dt == jnp.int8)
              if width > w.shape[-1]:  # zero columns: their sums are computed and dropped
                self.plan[out]["outputs"] = w.shape[-1]
                w = np.pad(w, ((0, 0),) * 3 + ((0, width - w.shape[-1]),))
            consts[f"{out}.w"] = self._put(w, dt)
          else:
            consts[f"{out}.w"] = self._put(w, np.int64)
            if n["op"] == "conv":
              self.plan[out]["conv"] = conv_lowering(conv)
      for name, arr in graph.tensors.items():
        if ".w." not in name:
          consts[name] = self._put(arr, np.int64)
      for n in graph.nodes:  # a threshold requant: its boundaries as thresholds on r, this rounding
        if n["op"] == "requant" and n["kind"] == "threshold":
          t, out = graph.tensors, n["out"]
          consts[f"{out}.thresholds"] = self._put(level_thresholds(
              t[f"{out}.m"], t[f"{out}.shift"], t[f"{out}.offset"], t[f"{out}.table"],
              self.accel.rounding), jnp.int64)
    mag = self._prove_no_overflow()
    with jax.enable_x64(True):
      consts.update(self._plan_float64_rescales(mag))
    self.consts = consts
    run = functools.partial(_run, graph=_Static(graph), plan=_Static(self.plan), accel=self.accel)
    # A split chunk runs as one program per device on its images (`shard_map`), each returning
    # its own counts (a leading axis of one per device) for the host to add up: no collective
    # between the devices, which a reduction over the split batch would put after every layer.
    def per_device(consts, images):
      out, stats = run(consts, images)
      return out, jax.tree_util.tree_map(lambda a: a[None], stats)
    split = functools.partial(jax.shard_map, mesh=mesh, in_specs=(P(), P("batch")))
    outputs = lambda consts, images: run(consts, images, count=False)[0]  # noqa: E731
    self._run_split = jax.jit(split(per_device, out_specs=(P("batch"), P("batch"))))
    self._outputs_split = jax.jit(split(outputs, out_specs=P("batch")))
    self._run_whole, self._outputs_whole = jax.jit(run), jax.jit(outputs)

  def _prove_no_overflow(self) -> None:
    """Marks each conv/dense (|Σ a·w| + |bias| <= its MAC bound + max|bias|) and residual add
    (|a| + |round(b·m >> shift)|) whose sum provably fits the accumulator (`fits`), from bounds
    on every tensor's magnitude carried through the graph."""
    g, hi = self.graph, 2 ** (self.accel.acc_bits - 1) - 1
    mag: dict[str, int] = {}
    for n in g.nodes:
      op, out = n["op"], n["out"]
      if op == "input" or op == "requant":
        mag[out] = max(abs(v) for v in self.ranges[out])
      elif op in ("conv", "dense"):
        p = self.plan[out]
        total = p["bound"] + int(np.max(np.abs(g.tensors[f"{out}.bias"])))
        p["fits"] = total <= hi
        mag[out] = total if p["fits"] else hi + 1
      elif op == "relu":
        mag[out] = max(mag[n["in"]], abs(int(n["zero"])))
      elif op == "sumpool":
        mag[out] = mag[n["in"]] * int(n["count"])
      elif op == "add":
        m = int(np.max(np.abs(g.tensors[f"{out}.m"])))
        shift = int(np.min(g.tensors[f"{out}.shift"]))
        b = (mag[n["b"]] * m >> max(shift, 0)) + 1  # the rounded shift adds at most 1
        fits = mag[n["a"]] + b <= hi
        self.plan[out] = {"fits": fits}
        mag[out] = mag[n["a"]] + b if fits else hi + 1
      else:  # maxpool, flatten: values of the input
        mag[out] = mag[n["in"]]
    return mag

  def _plan_float64_rescales(self, mag: dict[str, int]) -> dict[str, Any]:
    """Marks each dyadic requant and residual rescale whose `r·m + o` provably stays below 2^53
    (with room for the rounding's half), so float64 computes it exactly (`_round_scaled`), and
    returns the float64 constants those need; the rest run in int64."""
    g, consts = self.graph, {}
    for n in g.nodes:
      op, out = n["op"], n["out"]
      if op == "requant" and n["kind"] == "dyadic":
        decode = n["decode"]
        if decode is None:
          r = mag[n["in"]]
        elif "table" in decode:
          r = int(np.max(np.abs(g.tensors[decode["table"]])))
        else:
          r = mag[n["in"]] + abs(int(decode["zero_point"]))
        offset = int(np.max(np.abs(g.tensors[f"{out}.offset"])))
      elif op == "add":
        r, offset = mag[n["b"]], 0
      else:
        continue
      m, shift = g.tensors[f"{out}.m"], g.tensors[f"{out}.shift"]
      exact = r * int(np.max(np.abs(m))) + offset + 2 ** int(np.max(shift)) <= 2**53
      self.plan.setdefault(out, {})["f64"] = exact
      if exact:
        sign = g.tensors[f"{out}.sign"] if op == "requant" else 1  # folded: |sign·m| = m
        consts[f"{out}.m_f64"] = self._put(np.asarray(m, np.int64) * sign, np.float64)
        shift = np.asarray(shift, np.int64)
        consts[f"{out}.unit"] = self._put(np.ldexp(1.0, -shift), np.float64)
        consts[f"{out}.half"] = self._put(np.where(shift > 0, np.ldexp(1.0, shift - 1), 0.0),
                                         np.float64)
        if op == "requant":
          consts[f"{out}.offset_f64"] = self._put(g.tensors[f"{out}.offset"], np.float64)
    return consts

  def _mac_path(self, bound: int, int8_operands: bool, in_channels: int, op: str) -> str:
    """'f32' (exact below 2^24), 'int' (int32 sums) or 'i64'. 'auto' takes integer operands
    where they are faster than float32 on this backend (`lowering.integer_faster`)."""
    if bound >= 2**31:
      return "i64"
    if self.accel.mac == "int" or (self.accel.mac == "auto"
                                   and integer_faster(op, in_channels, int8_operands)):
      return "int"
    return "f32" if bound < 2**24 else "int"

  def __call__(self, images: np.ndarray) -> tuple[np.ndarray, dict[str, dict[str, int]]]:
    """(int logits [B, classes] or output codes, per-layer {'overflows', 'max_abs'})."""
    with jax.enable_x64(True):
      parts = [self.run_jax(chunk) for chunk in self.place(images)]
      outs = [np.asarray(out) for out, _ in parts]
      stats = [jax.device_get(s) for _, s in parts]  # per chunk: [devices] or scalars
    merged = {name: {"overflows": int(sum(np.sum(s[name]["overflows"]) for s in stats)),
                     "max_abs": int(max(np.max(s[name]["max_abs"]) for s in stats))}
              for name in stats[0]}
    return np.concatenate(outs), merged

  def outputs(self, images: np.ndarray) -> np.ndarray:
    """The int logits or output codes alone: what the accelerator computes, the same integers
    as `__call__`'s, without counting overflows and max |s| (two more passes over each
    accumulator; on a CPU 0-10 % of a call)."""
    with jax.enable_x64(True):
      return np.concatenate([np.asarray(self.run_jax(chunk, count=False))
                             for chunk in self.place(images)])

  def place(self, images: np.ndarray) -> list[jax.Array]:
    """uint8 `images` on the devices as a call runs them: the largest leading part whose count
    the devices divide, split evenly over them, then the rest (fewer images than devices) whole
    on every device."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
      raise ValueError(f"the integer graph takes uint8 images; got {images.dtype}")
    head = len(images) - len(images) % len(self.devices)
    chunks = [jax.device_put(images[:head], self._split)] if head else []
    if head < len(images) or not chunks:
      chunks.append(jax.device_put(images[head:], self._whole))
    return chunks

  def run_jax(self, chunk: jax.Array, *, count: bool = True):
    """The jitted call on one chunk of `place(images)`, without host transfers (for
    benchmarks); call inside jax.enable_x64. (output, counts) with `count`, else the output;
    the counts of a split chunk have one entry per device."""
    whole = len(self.devices) > 1 and chunk.sharding.is_fully_replicated
    if count:
      return (self._run_whole if whole else self._run_split)(self.consts, chunk)
    return (self._outputs_whole if whole else self._outputs_split)(self.consts, chunk)


class _Static:
  """Hashable-by-identity wrapper, so the graph can be a static argument of jit."""

  def __init__(self, value):
    self.value = value

  def __hash__(self):
    return id(self.value)

  def __eq__(self, other):
    return isinstance(other, _Static) and other.value is self.value


def _decode(x, decode, consts):
  if decode is None:
    return x
  if "table" in decode:
    return jnp.take(consts[decode["table"]], x.astype(jnp.int32), axis=0)
  return x - decode["zero_point"]


def _round_shift(t, shift, rounding: str):
  """`t / 2^shift` rounded: half_up (ties toward +inf), half_even, or floor (int64).

  One add before the arithmetic right shift (which floors): `half_up` adds 2^(shift-1);
  `half_even` adds 2^(shift-1) - 1 plus the quotient's lowest bit, so a tie goes up exactly when
  the floored quotient is odd. A shift of 0 adds nothing. `shift` is per channel, so the added
  constants are computed once on its few values.
  """
  if rounding == "floor":
    return jnp.right_shift(t, shift)
  positive = shift > 0
  half = jnp.where(positive, jnp.left_shift(jnp.ones_like(shift), jnp.maximum(shift - 1, 0)), 0)
  if rounding == "half_up":
    return jnp.right_shift(t + half, shift)
  odd = jnp.right_shift(t, shift) & positive.astype(t.dtype)
  return jnp.right_shift(t + (half - positive.astype(half.dtype)) + odd, shift)


def _round_scaled(t, unit, half, rounding: str):
  """`_round_shift` in float64, for integers `t` with |t| + 2^shift <= 2^53, `unit` = 2^-shift
  and `half` = 2^(shift-1) (0 for a shift of 0).

  Every step is exact there: `t + half` is an integer below 2^53, the product with `unit` a
  power-of-two scaling, and rint (ties to even) or floor of an exact value are the integer that
  `_round_shift` gives. Float64 products are cheaper than int64 multiplies and shift-and-carry.
  """
  if rounding == "half_even":
    return jnp.round(t * unit)
  if rounding == "half_up":
    return jnp.floor((t + half) * unit)
  return jnp.floor(t * unit)


def _max_abs_affine(y, sign, bias):
  """max |y·sign + bias| over `y` [..., C] with per-channel `sign`, `bias` (exact integers).

  |a·y + b| is convex in y, so over a channel its maximum sits at that channel's largest or
  smallest y: two reductions that keep the channel axis (they vectorise), then the few channels,
  instead of forming the affine map of the whole tensor once more just to reduce it.
  """
  axes = tuple(range(y.ndim - 1))
  hi = jnp.max(y, axis=axes).astype(jnp.int64)
  lo = jnp.min(y, axis=axes).astype(jnp.int64)
  return jnp.max(jnp.maximum(jnp.abs(hi * sign + bias), jnp.abs(lo * sign + bias)))


def _accumulate(s, accel: Accelerator, fits: bool = False, max_abs=None, count: bool = True):
  """The accumulator model on exact int64 sums: (stored value, overflow count, max |s|).

  `fits`: |s| is bounded within the accumulator's range (`Emulator` proves it from the code
  widths), so nothing overflows and only max |s| is counted (`max_abs`, when the caller has it
  cheaper than from `s`). `count=False`: the stored value only (the counts are None).
  """
  lo, hi = -(2 ** (accel.acc_bits - 1)), 2 ** (accel.acc_bits - 1) - 1
  if fits:
    if count and max_abs is None:
      max_abs = _max_abs_affine(s, jnp.ones((), jnp.int64), jnp.zeros((), jnp.int64))
    return s.astype(jnp.int32), jnp.int64(0) if count else None, max_abs if count else None
  over = jnp.sum((s < lo) | (s > hi)) if count else None
  max_abs = jnp.max(jnp.abs(s)) if count else None
  if accel.overflow == "saturate":
    stored = jnp.clip(s, lo, hi)
  else:
    span = jnp.int64(2**accel.acc_bits)
    stored = jnp.mod(s - lo, span) + lo
  return stored.astype(jnp.int32), over, max_abs


def _mac(x, w, node, plan):
  """The exact sums of a conv/dense node on its decoded input `x`, as its `plan` forms them."""
  path, dtype, conv, offset = plan["path"], plan.get("dtype"), plan.get("conv"), plan.get(
      "offset", 0)
  if path == "f32":
    a, pref = x.astype(jnp.float32), None
  elif path == "int":
    a, pref = (x - offset).astype(dtype), jnp.int32
  else:
    a, pref = x.astype(jnp.int64), jnp.int64

  def product(a):
    if node["op"] == "conv" and conv == "patches" and path != "f32":
      return conv_patches(a, w, tuple(node["strides"]), node["padding"], pref)
    if node["op"] == "conv":
      return jax.lax.conv_general_dilated(
          a, w, tuple(node["strides"]), [tuple(p) for p in node["padding"]],
          dimension_numbers=_DN, preferred_element_type=pref)
    return jax.lax.dot_general(a, w, (((a.ndim - 1,), (0,)), ((), ())),
                               preferred_element_type=pref)

  y = product(a)
  if offset:  # add back offset·Σw over each window: one all-ones image, padded like the input
    y = y + offset * product(jnp.ones((1, *a.shape[1:]), a.dtype))
  if "outputs" in plan:  # the kernel's zero padding columns
    y = y[..., :plan["outputs"]]
  return y  # exact integers: float32 (below 2^24), int32 or int64


def _run(consts, images, *, graph, plan, accel: Accelerator, count: bool = True):
  """The graph's output on `images`, and each accumulator's counts (empty unless `count`)."""
  graph, plan = graph.value, plan.value
  env: dict[str, Any] = {}
  stats: dict[str, dict[str, Any]] = {}
  for n in graph.nodes:
    op, out = n["op"], n["out"]
    c = lambda field, out=out: consts[f"{out}.{field}"]  # noqa: E731
    if op == "input":
      env[out] = images.astype(jnp.int32) * c("mul").astype(jnp.int32) - c("offset").astype(
          jnp.int32)
    elif op in ("conv", "dense"):
      x = _decode(env[n["in"]], n["decode"], consts)
      p = plan[out]
      y = _mac(x, c("w"), n, p)
      if p["fits"]:  # |y| + |bias| fits the accumulator, so int32 holds every sum exactly
        s = y.astype(jnp.int32) * c("sign").astype(jnp.int32) + c("bias").astype(jnp.int32)
        extreme = _max_abs_affine(y, c("sign"), c("bias")) if count else None
      else:
        s, extreme = y.astype(jnp.int64) * c("sign") + c("bias"), None
      env[out], over, max_abs = _accumulate(s, accel, p["fits"], extreme, count)
      if count:
        stats[n["name"]] = {"overflows": over, "max_abs": max_abs}
    elif op == "relu":
      env[out] = jnp.maximum(env[n["in"]], n["zero"])
    elif op == "maxpool":
      x = env[n["in"]]
      if n["window"] is None:
        env[out] = jnp.max(x, axis=(1, 2))
      else:
        env[out] = jax.lax.reduce_window(
            x, jnp.array(jnp.iinfo(x.dtype).min, x.dtype), jax.lax.max, (1, *n["window"], 1),
            (1, *n["strides"], 1), "VALID")
    elif op == "sumpool":
      env[out] = jnp.sum(env[n["in"]].astype(jnp.int64), axis=(1, 2))
    elif op == "flatten":
      x = env[n["in"]]
      env[out] = x.reshape(x.shape[0], -1)
    elif op == "requant":
      x = _decode(env[n["in"]], n["decode"], consts)
      if n["kind"] == "dyadic" and plan[out]["f64"]:  # r·m + o provably below 2^53: exact
        t = x.astype(jnp.float64) * c("m_f64") + c("offset_f64")  # m_f64 = sign·m
        q = _round_scaled(t, c("unit"), c("half"), accel.rounding)
        env[out] = jnp.clip(q + n["zero_point"], n["qmin"], n["qmax"]).astype(jnp.int32)
        continue
      r = x.astype(jnp.int64) * c("sign")
      if n["kind"] == "dyadic":
        q = _round_shift(r * c("m") + c("offset"), c("shift"), accel.rounding)
        env[out] = jnp.clip(q + n["zero_point"], n["qmin"], n["qmax"]).astype(jnp.int32)
      else:
        th = c("thresholds")  # [C, J], of accel.rounding
        env[out] = jnp.sum(r[..., None] >= th, axis=-1).astype(jnp.int32)
    elif op == "add":
      p = plan[out]
      if p["f64"]:
        b = _round_scaled(env[n["b"]].astype(jnp.float64) * c("m_f64"), c("unit"), c("half"),
                          accel.rounding)
      else:
        b = _round_shift(env[n["b"]].astype(jnp.int64) * c("m"), c("shift"), accel.rounding)
      wide = jnp.int32 if p["fits"] else jnp.int64  # fits: every sum is an int32
      s = env[n["a"]].astype(wide) + b.astype(wide)
      env[out], over, max_abs = _accumulate(s, accel, p["fits"], count=count)
      if count:
        stats[out] = {"overflows": over, "max_abs": max_abs}
    else:
      raise ValueError(f"unknown op {op!r} in the integer graph")
  return env[graph.meta["output"]], stats
