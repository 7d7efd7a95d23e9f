"""Export-time arithmetic of requantization: dyadic multipliers and integer thresholds.

A real rescale `y = r·μ + β` (r the integer input, μ > 0 and β per channel) becomes
`(r·m + o) >> shift` with `m` a `mult_bits`-bit integer, `μ ≈ m·2^-shift` and
`o = round(β·2^shift)`;
the rounding of the shift (half-up, half-even, floor) is the accelerator's, chosen per run.

Requantizing onto non-uniform levels (ESB, Liss, log activations) has no multiplier form: the
code is the number of integer thresholds `r` reaches, `T_j` the smallest integer whose real value
`r·μ + β` lies past the decision boundary between levels j and j+1 (the midpoint for the
round-to-nearest modes, the upper level itself for 'floor'). Ties (a boundary exactly on an
integer) go up for half-up and to the even level index for half-even; the three threshold sets are
computed here in float64 and stored, one per rounding mode.
"""

from __future__ import annotations

import math

import numpy as np

ROUNDING = ("half_even", "half_up", "floor")
MAX_SHIFT = 62


def dyadic(mu: np.ndarray, beta: np.ndarray, mult_bits: int = 31
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per channel `(m, shift, o)` with `μ ≈ m·2^-shift`, `β ≈ o·2^-shift`, all int64.

  `m` has `mult_bits` bits (its top bit set) unless μ is tiny or huge; the shift is capped so that
  `|o|` stays below 2^61 and the shift at 62, which keeps `r·m + o` inside int64 for |r| < 2^32.
  """
  mu = np.asarray(mu, np.float64).reshape(-1)
  beta = np.broadcast_to(np.asarray(beta, np.float64).reshape(-1), mu.shape)
  m = np.zeros(mu.shape, np.int64)
  shift = np.zeros(mu.shape, np.int64)
  o = np.zeros(mu.shape, np.int64)
  for i, (u, b) in enumerate(zip(mu, beta, strict=True)):
    if u < 0 or not math.isfinite(u) or not math.isfinite(b):
      raise ValueError(f"rescale multiplier {u!r} (offset {b!r}) is not a finite value >= 0")
    if u == 0:
      sh = min(MAX_SHIFT, 61 - max(int(abs(b)).bit_length(), 0))
      m[i], shift[i], o[i] = 0, sh, round(b * 2.0**sh)
      continue
    exp = math.frexp(u)[1]  # u = f·2^exp, f in [0.5, 1)
    sh = mult_bits - exp
    sh = min(sh, MAX_SHIFT, 61 - int(abs(b)).bit_length())
    sh = max(sh, 0)
    mi = round(u * 2.0**sh)
    if mi >= 2**mult_bits:  # μ too large for the multiplier at shift 0
      raise ValueError(f"rescale multiplier {u:.6g} does not fit a {mult_bits}-bit integer")
    m[i], shift[i], o[i] = mi, sh, round(b * 2.0**sh)
  return m, shift, o


def thresholds(levels: np.ndarray, mu: np.ndarray, beta: np.ndarray
               ) -> dict[str, np.ndarray]:
  """Integer thresholds [C, J] per rounding mode for requantizing `r` onto ascending `levels`.

  Args:
    levels: [J+1] ascending distinct real levels (in the target's scale: level = scale·value).
    mu: [C] positive real multiplier of the input integer `r` (real value r·μ + β).
    beta: [C] real offset.

  Returns:
    {mode: int64 [C, J]}: the code is the number of thresholds T_j with r >= T_j. Thresholds are
    clamped to ±2^40 (far outside any accumulator).
  """
  levels = np.asarray(levels, np.float64)
  mu = np.asarray(mu, np.float64).reshape(-1, 1)
  beta = np.broadcast_to(np.asarray(beta, np.float64).reshape(-1, 1), mu.shape)
  mid = 0.5 * (levels[1:] + levels[:-1])[None, :]  # [1, J]
  out = {}
  with np.errstate(divide="ignore", invalid="ignore"):
    t_mid = (mid - beta) / mu  # real r on the boundary
    t_floor = (levels[None, 1:] - beta) / mu
  limit = 2.0**40
  t_mid = np.clip(np.nan_to_num(t_mid, nan=limit, posinf=limit, neginf=-limit), -limit, limit)
  t_floor = np.clip(np.nan_to_num(t_floor, nan=limit, posinf=limit, neginf=-limit), -limit, limit)
  up = np.ceil(t_mid)
  exact = up == t_mid
  j = np.arange(t_mid.shape[1])[None, :]
  # Half-even: a tie between levels j and j+1 goes to the even index; j+1 odd -> stay at j.
  even = np.where(exact & ((j + 1) % 2 == 1), up + 1, up)
  out["half_up"] = up.astype(np.int64)
  out["half_even"] = even.astype(np.int64)
  out["floor"] = np.ceil(t_floor).astype(np.int64)
  # mu == 0: the value is β for every r; every threshold is below or above all r.
  zero = (mu[:, 0] == 0)
  if np.any(zero):
    for mode, boundary in (("half_up", mid), ("half_even", mid), ("floor", levels[None, 1:])):
      passed = beta[zero] >= boundary if mode != "half_even" else beta[zero] > boundary
      out[mode][zero] = np.where(passed, -limit, limit).astype(np.int64)
  return out
