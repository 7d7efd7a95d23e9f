"""Orbax checkpoints of a TrainState in `<workdir>/checkpoints`, saved with checksums.

Where the steps live, which step is intact and the config record belong to
`quantjax.workdir.Workdir`; this module reads and writes the Orbax trees. A save is finished
(Orbax waited for) and then given its manifest, so a step with a manifest is complete.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from quantjax.workdir import Workdir


def manager(workdir: Workdir | str, *, max_to_keep: int = 3) -> ocp.CheckpointManager:
  wd = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
  return ocp.CheckpointManager(wd.checkpoints_dir, options=options)


def state_tree(state) -> dict[str, Any]:
  """The saved pytree of a TrainState."""
  return {
      "step": state.step,
      "params": state.params,
      "batch_stats": state.batch_stats,
      "quant_state": state.quant_state,
      "opt_state": state.opt_state,
  }


def save_tree(mngr: ocp.CheckpointManager, wd: Workdir, step: int, tree: dict[str, Any]) -> None:
  """Saves `tree` as `step`, waits for Orbax, then writes the step's manifest.

  With several processes every one calls this: Orbax writes each array's bytes once, shared out
  among the processes that hold copies, and its primary process finishes the step after all
  have written, so the workdir's writer (process 0, Orbax's primary) hashes a complete step.
  """
  mngr.save(step, args=ocp.args.StandardSave(tree), force=True)
  mngr.wait_until_finished()
  if wd.writer:
    wd.finish_checkpoint(step)


def save(mngr: ocp.CheckpointManager, wd: Workdir, state) -> int:
  step = int(jax.device_get(state.step))
  save_tree(mngr, wd, step, state_tree(state))
  return step


def restore_into(mngr: ocp.CheckpointManager, state, step: int):
  """Restores checkpoint `step` (checked by `Workdir.intact_step`) into `state`'s structure."""
  target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state_tree(state))
  try:
    tree = mngr.restore(step, args=ocp.args.StandardRestore(target))
  except Exception as e:  # noqa: BLE001  orbax raises many types for a bad checkpoint
    hint = ""
    if "tree structures do not match" in str(e):  # intact, but laid out by other code
      hint = (" (its state is laid out otherwise: written by another quantjax version, whose "
              "optimizer state differs; resume it with that version, or fine-tune from it in a "
              "new workdir with --config.init_from)")
    raise ValueError(f"checkpoint {mngr.directory}/{step} cannot be restored: "
                     f"{_first_line(e)}{hint}") from None
  return state.replace(**tree)


def restore_variables(workdir: str, step: int | None = None) -> tuple[dict[str, Any], int]:
  """Raw `{'params', 'batch_stats', 'quant_state'}` of a workdir's checkpoint, and its step.

  `step=None` reads the newest intact step (a damaged newer one is reported and skipped). The
  arrays are NumPy, read the same whichever devices and processes saved them.
  """
  wd = Workdir(workdir)
  step = wd.intact_step(step)
  if step is None:
    raise ValueError(f"no checkpoints in {workdir!r} (expected {wd.checkpoints_dir})")
  mngr = ocp.CheckpointManager(wd.checkpoints_dir, item_handlers=ocp.StandardCheckpointHandler())
  try:
    # Into host arrays shaped by the step's metadata: Orbax refuses a restore without a target
    # on another topology than the one that saved it (a run on several processes, read by one).
    metadata = mngr.item_metadata(step)
    target = jax.tree_util.tree_map(lambda m: np.zeros(m.shape, m.dtype),
                                    getattr(metadata, "tree", metadata))
    tree = mngr.restore(step, args=ocp.args.StandardRestore(target))
  except Exception as e:  # noqa: BLE001
    raise ValueError(f"checkpoint {wd.step_dir(step)} cannot be restored: "
                     f"{_first_line(e)}") from None
  finally:
    mngr.close()  # an open manager's threads outlive an error and abort the interpreter's exit
  variables = {k: tree.get(k) or {} for k in ("params", "batch_stats", "quant_state")}
  return jax.tree_util.tree_map(np.asarray, variables), step


def _first_line(e: Exception) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0] if text else ''}"


# Kept for bench/accuracy_table.py and its test (owned elsewhere); new code calls Workdir.
def load_config(workdir: str) -> ml_collections.ConfigDict:
  return Workdir(workdir).load_config()


def record_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  Workdir(workdir).record_config(config)
