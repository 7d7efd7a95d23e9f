"""The cost model as a text table (per layer, totals, reduction against all-8-bit)."""

from __future__ import annotations


def format_report(report: dict) -> str:
  """The per-layer table and the totals as text."""
  lines = [f"{'layer':<14} {'b_w':>5} {'b_b':>5} {'b_in':>5} {'b_out':>5} {'memory bits':>12} "
           f"{'mult cost':>13} {'BOPs':>14} {'bytes':>8}"]
  for r in report["layers"]:
    lines.append(f"{r['layer']:<14} {r['weight_bits']:>5g} {r['bias_bits']:>5g} "
                 f"{r['input_bits']:>5g} {r['output_bits']:>5g} {r['memory_bits']:>12,.0f} "
                 f"{r['mult_cost']:>13,.0f} {r['bops']:>14,.0f} {r['param_bytes']:>8,}")
  total, ref, red = report["total"], report["reference_8bit"], report["reduction_vs_8bit"]
  for key in ("memory_bits", "mult_cost", "bops", "param_bytes"):
    lines.append(f"{key:<14} {total[key]:>16,.0f}  all-8-bit {ref[key]:>16,.0f}  "
                 f"reduction {100 * red[key]:6.1f} %")
  return "\n".join(lines)
