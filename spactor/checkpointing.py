"""Checkpoints that make a restart continue exactly: train state, data-iterator position and run metadata.

One Orbax step directory holds three items, written together and made visible by one atomic rename:
- `state`: the TrainState (step, params, optimizer state), sharded arrays;
- `data`: the tf.data iterator of each process (`tf.train.Checkpoint`), so the data order goes on unbroken
  (absent for synthetic input; TensorFlow is imported only when this item is read or written);
- `meta`: JSON with the stage the state belongs to, so a restart rebuilds the right tree before restoring.

A crash mid-write leaves only a temporary directory, which Orbax never lists as a step. A latest step that
cannot be read is reported and the one before it is used.
"""
import dataclasses
import logging
import os
import time
from typing import Any, Callable, Optional

import flax
import jax
import optax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


# --- tf.data iterator as an Orbax item -------------------------------------------------------------------


class DatasetIteratorHandler(ocp.CheckpointHandler):
  """Saves each process's tf.data iterator in its own file inside the item directory."""

  def _prefix(self, directory) -> str:
    return os.path.join(os.fspath(directory), f'process_{jax.process_index()}-of-{jax.process_count()}')

  def save(self, directory, *args, **kwargs):
    import tensorflow as tf
    args = kwargs.get('args', args[0] if args else None)
    tf.io.gfile.makedirs(os.fspath(directory))
    tf.train.Checkpoint(iterator=args.iterator).write(self._prefix(directory))

  def restore(self, directory, *args, **kwargs):
    import tensorflow as tf
    args = kwargs.get('args', args[0] if args else None)
    prefix = self._prefix(directory)
    if not tf.io.gfile.exists(prefix + '.index'):
      raise FileNotFoundError(
          f'no data-iterator state for this process at {prefix} (was the run started with another '
          f'number of processes?)')
    tf.train.Checkpoint(iterator=args.iterator).read(prefix).assert_consumed()
    return args.iterator

  def metadata(self, directory):
    return None

  def finalize(self, directory):
    pass

  def close(self):
    pass


@ocp.args.register_with_handler(DatasetIteratorHandler, for_save=True)
@dataclasses.dataclass
class DatasetIteratorSave(ocp.args.CheckpointArgs):
  iterator: Any


@ocp.args.register_with_handler(DatasetIteratorHandler, for_restore=True)
@dataclasses.dataclass
class DatasetIteratorRestore(ocp.args.CheckpointArgs):
  iterator: Any


# --- the manager ------------------------------------------------------------------------------------------


def make_manager(directory: str, keep: int = 3) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, enable_async_checkpointing=False, cleanup_tmp_directories=True)
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(directory, 'checkpoints')), options=options,
      item_handlers={'state': ocp.StandardCheckpointHandler(), 'meta': ocp.JsonCheckpointHandler(),
                     'data': DatasetIteratorHandler()})


def save(manager: ocp.CheckpointManager, state: TrainState, iterator, meta: dict) -> int:
  """Writes the state, the metadata and (unless `iterator` is None) the data iterator's position."""
  step = int(jax.device_get(state.step))
  items = {'state': ocp.args.StandardSave(state), 'meta': ocp.args.JsonSave(meta)}
  if iterator is not None:
    items['data'] = DatasetIteratorSave(iterator)
  manager.save(step, args=ocp.args.Composite(**items), force=True)
  manager.wait_until_finished()
  return step


def restore_latest(manager: ocp.CheckpointManager,
                   abstract_state_for: Callable[[dict], TrainState],
                   iterator) -> Optional[tuple[TrainState, dict]]:
  """Restores the newest readable step; returns None when there is none.

  `abstract_state_for(meta)` gives the shape/sharding tree of the state for the stage recorded in `meta`.
  A step that fails to read is reported and skipped, so one damaged write costs one checkpoint interval.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  for step in steps:
    try:
      meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
      items = {'state': ocp.args.StandardRestore(abstract_state_for(meta))}
      if iterator is not None:
        items['data'] = DatasetIteratorRestore(iterator)
      restored = manager.restore(step, args=ocp.args.Composite(**items))
      return restored['state'], meta
    except Exception as e:  # a damaged step: report it, set it aside, and fall back to the previous one
      aside = set_aside(manager, step)
      log.error('checkpoint at step %d in %s cannot be read (%s: %s); moved to %s, trying the previous one',
                step, manager.directory, type(e).__name__, e, aside)
  if steps:
    raise RuntimeError(f'none of the checkpoints {steps} in {manager.directory} can be read')
  return None


def set_aside(manager: ocp.CheckpointManager, step: int) -> str:
  """Renames a damaged step directory (kept for inspection, never deleted) so the step can be written again."""
  source = os.path.join(os.fspath(manager.directory), str(step))
  target = f'{source}.damaged-{int(time.time())}'
  if jax.process_index() == 0:
    os.rename(source, target)
  manager.reload()
  return target


# --- the stage switch -------------------------------------------------------------------------------------


def carry_optimizer_state(old_opt_state, new_params, tx: optax.GradientTransformation):
  """The optimizer state for `new_params` (a subtree of the old params), taken leaf by leaf from the old one.

  Leaves are matched by their tree path, so slots of parameters that are gone (the generator's, the RTD
  head's) are dropped and every other slot, step counters included, goes on unchanged.
  """
  fresh = jax.eval_shape(tx.init, new_params)
  old_leaves = {jax.tree_util.keystr(path): leaf
                for path, leaf in jax.tree_util.tree_flatten_with_path(old_opt_state)[0]}

  def take(path, fresh_leaf):
    key = jax.tree_util.keystr(path)
    if key not in old_leaves:
      raise KeyError(f'optimizer slot {key} has no counterpart in the old optimizer state')
    old = old_leaves[key]
    if old.shape != fresh_leaf.shape:
      raise ValueError(f'optimizer slot {key}: shape {old.shape} != expected {fresh_leaf.shape}')
    return old

  return jax.tree_util.tree_map_with_path(take, fresh)
