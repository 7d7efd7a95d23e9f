"""Export-time arithmetic of requantization: dyadic multipliers and the thresholds they imply.

A real rescale `y = r·μ + β` (r the integer input, μ > 0 and β per channel) becomes
`(r·m + o) >> shift` with `m` a `mult_bits`-bit integer, `μ ≈ m·2^-shift` and
`o = round(β·2^shift)`;
the rounding of the shift (half-up, half-even, floor) is the accelerator's, chosen per run.

Requantizing onto non-uniform levels (ESB, Liss, log activations) uses the same `(m, shift, o)`:
`v = r·m + o` is the value `v·2^-shift` in units of the target's integer levels, and the code is
the number of decision boundaries it passes (the midpoints between levels for the round-to-nearest
modes, the upper level itself for 'floor'; a tie goes up for half-up and to the even level index
for half-even). The graph stores `(m, shift, o)` and the level table once; `level_thresholds`
turns them into the integer thresholds on `r` of one rounding mode (exact integer arithmetic),
which the emulator and the ONNX writer compare against.
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


THRESHOLD_LIMIT = 2**62  # stands for "every r" (-) or "no r" (+): beyond any int64 input


def level_thresholds(m, shift, offset, levels, rounding: str) -> np.ndarray:
  """Integer thresholds [C, J] on `r` of a threshold requantization under `rounding`.

  The code is `#{j : r >= T[c, j]}`: `T[c, j]` is the smallest integer `r` whose value
  `v = r·m[c] + offset[c]` passes boundary j, computed exactly in Python integers:

  - 'half_up' / 'half_even': `2·v >= (levels[j] + levels[j+1])·2^shift[c]` (the midpoint); at
    equality (a tie) half-up passes, half-even passes only when `j + 1` is even;
  - 'floor': `v >= levels[j+1]·2^shift[c]`.

  Args:
    m: [C] non-negative multipliers.
    shift: [C] right shifts.
    offset: [C] offsets added before the shift.
    levels: [J+1] ascending distinct integer levels of the target.
    rounding: 'half_even', 'half_up' or 'floor'.

  Returns:
    int64 [C, J], clamped to ±THRESHOLD_LIMIT (with `m = 0` every r passes a boundary or none
    does).
  """
  if rounding not in ROUNDING:
    raise ValueError(f"rounding={rounding!r} is not valid; choose one of {', '.join(ROUNDING)}")
  levels = [int(v) for v in np.asarray(levels).reshape(-1)]
  m, shift, offset = (np.asarray(a).reshape(-1) for a in (m, shift, offset))
  out = np.empty((m.size, len(levels) - 1), np.int64)
  for c, (mc, sc, oc) in enumerate(zip(m.tolist(), shift.tolist(), offset.tolist(), strict=True)):
    for j in range(len(levels) - 1):
      if rounding == "floor":
        num, den = (levels[j + 1] << sc) - oc, mc  # r·den >= num
      else:
        num, den = ((levels[j] + levels[j + 1]) << sc) - 2 * oc, 2 * mc
      tie_passes = rounding != "half_even" or (j + 1) % 2 == 0
      if den == 0:
        passes = num < 0 or (num == 0 and tie_passes)
        t = -THRESHOLD_LIMIT if passes else THRESHOLD_LIMIT
      else:
        t = -(-num // den)  # ceil(num / den)
        if t * den == num and not tie_passes:
          t += 1
      out[c, j] = min(max(t, -THRESHOLD_LIMIT), THRESHOLD_LIMIT)
  return out
