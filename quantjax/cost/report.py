"""The cost model as a text table (per layer, totals, reduction against all-8-bit)."""

from __future__ import annotations

# Short labels of the multiplier kinds (quantizers.base.MULTIPLIER_KINDS) for the table.
_KIND_LABELS = {"integer": "int", "shift": "shift", "significand_shift": "sig", "float": "fp"}


def _operand(row: dict, tensor: str) -> str:
  """'int8', 'shift4', 'sig2' (+ shift), 'fp32': the kind and width the multiplier sees."""
  kind = row[f"{tensor}_multiplier"]
  return f"{_KIND_LABELS.get(kind, kind)}{row[f'{tensor}_operand_bits']:g}"


def format_report(report: dict) -> str:
  """The per-layer table and the totals as text.

  Stored bits per value (`b_w`, `b_b`, `b_in`, `b_out`), the level tables' bits, and what the
  multiplier sees of the weight, input and output (`m_w`, `m_in`, `m_out`: kind and width).
  """
  lines = [f"{'layer':<14} {'b_w':>5} {'b_b':>5} {'b_in':>5} {'b_out':>5} {'tables':>6} "
           f"{'m_w':>7} {'m_in':>7} {'m_out':>7} {'memory bits':>12} "
           f"{'mult cost':>13} {'BOPs':>14} {'bytes':>8}"]
  for r in report["layers"]:
    tables = r["weight_table_bits"] + r["bias_table_bits"] + r["output_table_bits"]
    lines.append(f"{r['layer']:<14} {r['weight_bits']:>5.3g} {r['bias_bits']:>5g} "
                 f"{r['input_bits']:>5g} {r['output_bits']:>5g} {tables:>6g} "
                 f"{_operand(r, 'weight'):>7} {_operand(r, 'input'):>7} "
                 f"{_operand(r, 'output'):>7} {r['memory_bits']:>12,.0f} "
                 f"{r['mult_cost']:>13,.0f} {r['bops']:>14,.0f} {r['param_bytes']:>8,}")
  total, ref, red = report["total"], report["reference_8bit"], report["reduction_vs_8bit"]
  for key in ("memory_bits", "mult_cost", "bops", "param_bytes"):
    lines.append(f"{key:<14} {total[key]:>16,.0f}  all-8-bit {ref[key]:>16,.0f}  "
                 f"reduction {100 * red[key]:6.1f} %")
  return "\n".join(lines)
