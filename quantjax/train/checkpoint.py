"""Orbax checkpoints in `<workdir>/checkpoints`, resume, and the workdir's config record.

The config a workdir was created with is kept in `<workdir>/config.json`. Resuming with a config
that changes what the checkpoint holds (model, dataset, quantization) is refused with a one-line
error before any work, so a checkpoint is never overwritten by an incompatible run.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

CONFIG_FILE = "config.json"
# Fields that change the shape or meaning of what a checkpoint holds.
STRUCTURAL_FIELDS = ("dataset", "model", "model_kwargs", "quant")


def manager(workdir: str, *, max_to_keep: int = 3) -> ocp.CheckpointManager:
  path = os.path.join(os.path.abspath(workdir), "checkpoints")
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
  return ocp.CheckpointManager(path, options=options)


def has_checkpoints(workdir: str) -> bool:
  """Whether `workdir` holds at least one saved step (without creating anything)."""
  path = os.path.join(os.path.abspath(workdir), "checkpoints")
  return os.path.isdir(path) and any(name.isdigit() for name in os.listdir(path))


def state_tree(state) -> dict[str, Any]:
  """The saved pytree of a TrainState."""
  return {
      "step": state.step,
      "params": state.params,
      "batch_stats": state.batch_stats,
      "quant_state": state.quant_state,
      "opt_state": state.opt_state,
  }


def save(mngr: ocp.CheckpointManager, state) -> None:
  step = int(jax.device_get(state.step))
  mngr.save(step, args=ocp.args.StandardSave(state_tree(state)), force=True)


def restore_into(mngr: ocp.CheckpointManager, state, step: int | None = None):
  """Restores the latest (or `step`) checkpoint into `state`'s structure and shardings."""
  step = mngr.latest_step() if step is None else step
  if step is None:
    return state
  target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state_tree(state))
  try:
    tree = mngr.restore(step, args=ocp.args.StandardRestore(target))
  except Exception as e:  # noqa: BLE001  orbax raises many types for a bad checkpoint
    raise ValueError(
        f"checkpoint {mngr.directory}/{step} cannot be restored: {_first_line(e)}") from e
  return state.replace(**tree)


def restore_variables(workdir: str, step: int | None = None) -> tuple[dict[str, Any], int]:
  """Raw `{'params', 'batch_stats', 'quant_state'}` of a workdir's checkpoint, and its step."""
  ckpt_dir = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(ckpt_dir):
    raise ValueError(f"no checkpoints in {workdir!r} (expected {ckpt_dir})")
  mngr = ocp.CheckpointManager(ckpt_dir)
  steps = mngr.all_steps()
  if not steps:
    raise ValueError(f"no checkpoints in {ckpt_dir}")
  step = max(steps) if step is None else step
  if step not in steps:
    raise ValueError(f"checkpoint step {step} not in {workdir!r}; available steps: "
                     f"{', '.join(map(str, sorted(steps)))}")
  try:
    tree = mngr.restore(step, args=ocp.args.StandardRestore())
  except Exception as e:  # noqa: BLE001
    raise ValueError(f"checkpoint {ckpt_dir}/{step} cannot be restored: {_first_line(e)}") from e
  mngr.close()
  variables = {k: tree.get(k) or {} for k in ("params", "batch_stats", "quant_state")}
  return jax.tree_util.tree_map(np.asarray, variables), step


def _first_line(e: Exception) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0] if text else ''}"


# -- the workdir's config record ------------------------------------------------------------------


def _canonical(value: Any) -> Any:
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  if isinstance(value, dict):
    return {k: _canonical(v) for k, v in sorted(value.items())}
  if isinstance(value, (list, tuple)):
    return [_canonical(v) for v in value]
  return value


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with (written by `record_config`)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise ValueError(f"{path} not found: is {workdir!r} a quantjax workdir?")
  try:
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON: {e}") from None


def check_compatible(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Raises if `workdir` holds checkpoints made with a different model/dataset/quantization."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path) or not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return
  old = _canonical(load_config(workdir))
  new = _canonical(config)
  for field in STRUCTURAL_FIELDS:
    if old.get(field) != new.get(field):
      raise ValueError(
          f"workdir {workdir!r} holds checkpoints made with {field}={_short(old.get(field))}, "
          f"but this config has {field}={_short(new.get(field))}; use a new --workdir"
      )


def _short(value: Any, limit: int = 120) -> str:
  text = json.dumps(value, sort_keys=True)
  return text if len(text) <= limit else text[: limit - 3] + "..."


def record_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes the config into the workdir (atomically)."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILE)
  write_json_atomic(path, _canonical(config))


def write_json_atomic(path: str, data: Any) -> None:
  """Writes JSON via a temporary file and a rename, so a crash never leaves half a file."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(data, f, indent=2, sort_keys=True, default=_json_default)
    f.write("\n")
  os.replace(tmp, path)


def _json_default(value: Any) -> Any:
  if isinstance(value, (np.generic, np.ndarray)) or hasattr(value, "__array__"):
    return np.asarray(value).tolist()
  raise TypeError(f"not JSON serialisable: {type(value).__name__}")
