"""MXQN: SQNR-driven mixed fixed-point / logarithmic post-training quantization, METHODS.md §2.

Huang, Liu, Fang, "MXQN: Mixed quantization for reducing bit-width of weights and activations in
deep convolutional neural networks", Applied Intelligence 51(7):4561-4574, 2021.

No retraining. For every Conv/Dense layer, on calibration data from the validation split:

- weights: fixed point (`fixed_point`, Qm.n) at `weight_bits`, with the `F` maximising the SQNR
  among `F0, ..., F0 + frac_search` (`F0` the no-clipping value);
- input activation (the first layer's input, the image, stays float unless `quantize_input`):
  fixed point (`uniform` with a power-of-two step, unsigned for non-negative inputs) with its
  SQNR-best `F`, against the logarithmic quantizer (`log`, base `2^(1/base_root)`, √2 by default,
  full scale by SQNR, no sign bit for non-negative inputs). Log is chosen when its SQNR beats
  fixed point's by at least `log_margin_db` (a negative margin favours log), unless `force`
  names the scheme for that layer;
- optionally, a layer's width is lowered (activations down to `min_act_bits`, weights down to
  `min_weight_bits`) while the chosen scheme's SQNR stays at or above the threshold.

Every candidate's SQNR, the choice and the bits go into the report (`report_rows`, `markdown`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from quantjax import quantizers
from quantjax.intercept import LayerInfo
from quantjax.ptq.sqnr import quantizer_sqnr
from quantjax.quantizers.fixed_point import fractional_bits_for
from quantjax.reports import progress

SCHEMES = ("fixed", "log")


@dataclasses.dataclass(frozen=True)
class MxqnConfig:
  weight_bits: int = 8
  act_bits: int = 8
  min_weight_bits: int = 0  # 0 = no lowering of weights
  min_act_bits: int = 0  # 0 = no lowering of activations
  weight_sqnr_db: float = 0.0  # lowering stops below this SQNR
  act_sqnr_db: float = 0.0
  log_margin_db: float = 0.0  # log wins when SQNR_log >= SQNR_fixed + margin
  base_root: int = 2  # log base 2^(1/m): 2 = √2
  frac_search: int = 4  # fixed point F tried: F0 .. F0 + frac_search
  quantize_input: bool = False  # quantize the first layer's input (the image)
  force: str = ""  # 'regex=fixed,regex=log': forced activation schemes by layer path

  def __post_init__(self):
    for name in ("weight_bits", "act_bits"):
      quantizers.base.check_bits("ptq", name, getattr(self, name))
    if self.min_weight_bits:
      quantizers.base.check_bits("ptq", "min_weight_bits", self.min_weight_bits,
                                 hi=self.weight_bits)
    if self.min_act_bits:
      quantizers.base.check_bits("ptq", "min_act_bits", self.min_act_bits, hi=self.act_bits)
    if self.act_bits > 8 or (self.min_act_bits and self.min_act_bits > 8):
      raise ValueError(f"ptq.act_bits={self.act_bits!r} is out of range for the log candidate; "
                       "valid: 2 to 8")
    quantizers.base.check_choice("ptq", "base_root", self.base_root, (1, 2, 4))
    if self.frac_search < 0:
      raise ValueError(f"ptq.frac_search={self.frac_search!r} must be >= 0")
    self.forced()

  def forced(self) -> list[tuple[re.Pattern, str]]:
    """The `force` entries as (compiled regex, scheme); raises on a bad entry."""
    out = []
    for item in filter(None, (s.strip() for s in self.force.split(","))):
      pattern, _, scheme = item.rpartition("=")
      if scheme not in SCHEMES or not pattern:
        raise ValueError(f"ptq.force entry {item!r} is not valid; write 'regex=fixed' or "
                         "'regex=log'")
      try:
        out.append((re.compile(pattern), scheme))
      except re.error as e:
        raise ValueError(f"ptq.force regex {pattern!r} is invalid: {e}") from None
    return out


def best_weight(w: np.ndarray, bits: int, frac_search: int) -> tuple[dict[str, Any], float, list]:
  """The SQNR-best fixed-point weight spec at `bits`, its SQNR and every F tried."""
  # The largest F whose top code still covers max|x| (the start of the SQNR search).
  f0 = int(fractional_bits_for(float(np.max(np.abs(w))), bits, strict=True))
  tried = []
  for f in range(f0, f0 + frac_search + 1):
    spec = {"name": "fixed_point", "bits": bits, "fractional_bits": f}
    tried.append((spec, quantizer_sqnr(quantizers.from_dict(spec), w, "weight")))
  spec, best = max(tried, key=lambda t: t[1])
  return spec, best, [{"F": s["fractional_bits"], "sqnr_db": v} for s, v in tried]


def act_candidates(x: np.ndarray, bits: int, cfg: MxqnConfig) -> dict[str, tuple[dict, float]]:
  """{'fixed': (spec, SQNR), 'log': (spec, SQNR)} for an activation tensor at `bits`."""
  signed = bool(np.min(x) < 0)
  f0 = int(fractional_bits_for(float(np.max(np.abs(x))), bits, signed=signed, strict=True))
  fixed = []
  for f in range(f0, f0 + cfg.frac_search + 1):
    spec = {"name": "uniform", "bits": bits, "signed": signed, "scale_method": "pow2",
            "fractional_bits": f}
    fixed.append((spec, quantizer_sqnr(quantizers.from_dict(spec), x, "act")))
  log_spec = {"name": "log", "bits": bits, "base_root": cfg.base_root, "signed": signed,
              "full_scale": "sqnr"}
  return {"fixed": max(fixed, key=lambda t: t[1]),
          "log": (log_spec, quantizer_sqnr(quantizers.from_dict(log_spec), x, "act"))}


def choose(path: str, cands: Mapping[str, tuple[dict, float]], cfg: MxqnConfig) -> tuple[str, str]:
  """(scheme, why) for one layer's activation."""
  for regex, scheme in cfg.forced():
    if regex.fullmatch(path):
      return scheme, "forced"
  fixed, log = cands["fixed"][1], cands["log"][1]
  if log >= fixed + cfg.log_margin_db:
    return "log", f"SQNR log {log:.2f} >= fixed {fixed:.2f} + margin {cfg.log_margin_db:g} dB"
  return "fixed", f"SQNR fixed {fixed:.2f} > log {log:.2f} - margin {cfg.log_margin_db:g} dB"


def run(layers: Sequence[LayerInfo], kernels: Mapping[str, np.ndarray],
        inputs: Mapping[str, np.ndarray], cfg: MxqnConfig) -> tuple[list[dict], list[dict]]:
  """MXQN's per-layer choices.

  Args:
    layers: the model's layers in call order.
    kernels: each layer's float kernel.
    inputs: each layer's input activation on the calibration images (float network).
    cfg: the method's settings.

  Returns:
    (rules for `config.quant.rules`, one per layer with its 'weight' and 'act' specs;
     report rows with the SQNR of every candidate, the choice and the bits).
  """
  rules, rows = [], []
  for i, layer in enumerate(progress.bar(layers, desc="mxqn", unit="layer")):
    w = np.asarray(kernels[layer.path], np.float32)
    bits = cfg.weight_bits
    w_spec, w_sqnr, w_tried = best_weight(w, bits, cfg.frac_search)
    w_by_bits = {bits: (w_spec, w_sqnr, w_tried)}
    while cfg.min_weight_bits and bits > cfg.min_weight_bits:
      lower = best_weight(w, bits - 1, cfg.frac_search)
      w_by_bits[bits - 1] = lower
      if lower[1] < cfg.weight_sqnr_db:
        break
      bits -= 1
      w_spec, w_sqnr, w_tried = lower
    row = {"layer": layer.path, "weight_bits": w_spec["bits"], "weight_F": w_spec[
        "fractional_bits"], "weight_sqnr_db": w_sqnr,
           "weight_candidates": {b: v[2] for b, v in w_by_bits.items()}}
    rule = {"pattern": re.escape(layer.path), "weight": w_spec, "act": None}
    if i > 0 or cfg.quantize_input:
      x = np.asarray(inputs[layer.path], np.float32)
      bits = cfg.act_bits
      cands = act_candidates(x, bits, cfg)
      scheme, why = choose(layer.path, cands, cfg)
      tried = {bits: cands}
      while cfg.min_act_bits and bits > cfg.min_act_bits:
        lower = act_candidates(x, bits - 1, cfg)
        tried[bits - 1] = lower
        lower_scheme, lower_why = choose(layer.path, lower, cfg)
        if lower[lower_scheme][1] < cfg.act_sqnr_db:
          break
        bits, cands, scheme, why = bits - 1, lower, lower_scheme, lower_why
      rule["act"] = cands[scheme][0]
      row.update({
          "act_signed": bool(np.min(x) < 0), "act_bits": bits, "act_scheme": scheme,
          "act_sqnr_fixed_db": cands["fixed"][1], "act_sqnr_log_db": cands["log"][1],
          "act_fixed_F": cands["fixed"][0]["fractional_bits"], "why": why,
          "act_candidates": {b: {s: v[1] for s, v in c.items()} for b, c in tried.items()},
      })
    else:
      row.update({"act_bits": None, "act_scheme": "float", "why": "network input kept float"})
    logging.info("mxqn %s: weight fixed%d F=%d SQNR %.2f dB; act %s%s (%s)", layer.path,
                 row["weight_bits"], row["weight_F"], w_sqnr, row["act_scheme"],
                 row["act_bits"] or "", row["why"])
    rules.append(rule)
    rows.append(row)
  return rules, rows


def markdown(rows: Sequence[Mapping[str, Any]]) -> str:
  """The per-layer report table."""

  def f(v):
    return "" if v is None else f"{v:.2f}"

  lines = ["| layer | weight | weight SQNR dB | act bits | act SQNR fixed dB | act SQNR log dB "
           "| act choice | why |", "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
        f"| {r['layer']} | fixed{r['weight_bits']} F={r['weight_F']} | {f(r['weight_sqnr_db'])} "
        f"| {r['act_bits'] or 'float'} | {f(r.get('act_sqnr_fixed_db'))} "
        f"| {f(r.get('act_sqnr_log_db'))} | {r['act_scheme']} | {r['why']} |")
  return "\n".join(lines) + "\n"
