"""Checkpoints that make a restart continue exactly: train state, data-iterator position and run metadata.

One Orbax step directory holds three items, written together and made visible by one atomic rename:
- `state`: the TrainState (step, params, optimizer state), sharded arrays;
- `data`: the tf.data iterator of each process (`tf.train.Checkpoint`), so the data order goes on unbroken
  (absent for synthetic input; TensorFlow is imported only when this item is read or written);
- `meta`: JSON with the stage the state belongs to, so a restart rebuilds the right tree before restoring.

A crash mid-write leaves only a temporary directory, which Orbax never lists as a step. A restart never loses a
run: a checkpoint of another model, tree or process count stops the run and changes nothing; a newest step whose
files cannot be read is set aside (renamed, never deleted) once an older one has been restored, and when none can
be read the run stops and leaves them all in place.
"""
import contextlib
import dataclasses
import gc
import json
import logging
import os
import re
import sys
import time
from typing import Any, Callable, Optional

import flax
import jax
import numpy as np
import optax
import orbax.checkpoint as ocp

from spactor.errors import UsageError

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


class CheckpointMismatchError(UsageError):
  """The checkpoints hold another model, tree or process count than this run builds; nothing is changed."""


class UnreadableCheckpointsError(UsageError):
  """No checkpoint in the directory can be read; they are left as they are."""


def restore_latest(manager: ocp.CheckpointManager,
                   abstract_state_for: Callable[[dict], TrainState],
                   iterator) -> Optional[tuple[TrainState, dict]]:
  """Restores the newest readable step; returns None when there is none.

  `abstract_state_for(meta)` gives the shape/sharding tree of the state for the stage recorded in `meta`. Before
  any array is read, the step's stored tree and process count are compared with what this run builds: a
  difference is not damage, so it stops the run (CheckpointMismatchError) and changes nothing. A step whose files
  cannot be read is skipped; it is set aside only once an older step has been restored (so one damaged write
  costs one checkpoint interval), and when none can be read the run stops and they all stay where they are.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  unreadable = []  # (step, error) of newer steps that could not be read
  for step in steps:
    try:
      meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
      stored = manager.item_metadata(step)['state']
    except Exception as e:  # pylint: disable=broad-except
      if not is_damage(e):
        raise
      unreadable.append((step, e))
      continue
    template = abstract_state_for(meta)
    check_same_tree(manager.directory, step, meta, stored, template)
    if iterator is not None:
      check_same_processes(manager.directory, step)
    items = {'state': ocp.args.StandardRestore(template)}
    if iterator is not None:
      items['data'] = DatasetIteratorRestore(iterator)
    try:
      with _quiet_unraisable():
        restored = manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except
      if not is_damage(e):
        raise
      unreadable.append((step, e))
      continue
    for bad_step, error in unreadable:
      aside = set_aside(manager, bad_step)
      log.error('checkpoint at step %d in %s cannot be read (%s); moved to %s and restored step %d instead',
                bad_step, manager.directory, _first_line(error), aside, step)
      log.debug('the error reading step %d', bad_step, exc_info=error)
    return restored['state'], meta
  if unreadable:
    for step, error in unreadable:
      log.debug('the error reading step %d', step, exc_info=error)
    raise UnreadableCheckpointsError(
        f'none of the checkpoints {steps} in {manager.directory} can be read (step {unreadable[0][0]}: '
        f'{_first_line(unreadable[0][1])}); they are left as they are. Restore them from a copy, or move them '
        f'away to start the run again from step 0.')
  return None


# Messages of errors that come from files that are missing, truncated or overwritten (TensorStore, Orbax, json).
_DAMAGE = re.compile(r'error (reading|opening|decoding)|not_found|data_loss|out_of_range|corrupt|checksum|'
                     r'tensorstore|no such file|unexpected end|truncated', re.IGNORECASE)


def is_damage(error: BaseException) -> bool:
  """Whether reading failed because of the files themselves (as opposed to what the run asked of them)."""
  if isinstance(error, (OSError, EOFError, json.JSONDecodeError, UnicodeDecodeError)):
    return True
  if type(error).__module__.startswith('tensorflow'):  # tf.errors.DataLossError and its kin
    return True
  return bool(_DAMAGE.search(str(error)))


def _first_line(error: BaseException, limit: int = 300) -> str:
  """The error in one line, short: TensorStore appends the whole spec of the array to its messages."""
  text = ' '.join(str(error).split()).split(' See full TensorStore details')[0]
  return f'{type(error).__name__}: {text[:limit]}{"..." if len(text) > limit else ""}'


def _key_name(key) -> str:
  for attribute in ('key', 'name', 'idx'):
    if hasattr(key, attribute):
      return str(getattr(key, attribute))
  return str(key)


def _flat_shapes(tree) -> dict[str, tuple[tuple[int, ...], str]]:
  """{'params/encoder/.../kernel': (shape, dtype)} of every array leaf of a state or of Orbax's metadata tree."""
  leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, 'shape'))[0]
  return {'/'.join(_key_name(k) for k in path): (tuple(leaf.shape), str(np.dtype(leaf.dtype)))
          for path, leaf in leaves if hasattr(leaf, 'shape')}


def tree_differences(stored, requested) -> list[str]:
  """Each tensor that differs between the stored state and the one this run builds, as a short phrase (params
  first: they say most about the model)."""
  stored, requested = _flat_shapes(stored), _flat_shapes(requested)
  out = []
  for name in sorted(set(stored) | set(requested), key=lambda name: (not name.startswith('params/'), name)):
    if name not in requested:
      out.append(f'{name} {stored[name][0]} is in the checkpoint but not in this run')
    elif name not in stored:
      out.append(f'{name} {requested[name][0]} of this run is not in the checkpoint')
    elif stored[name] != requested[name]:
      out.append(f'{name} is {_shape(stored[name])} in the checkpoint but {_shape(requested[name])} in this run')
  return out


def _shape(shape_and_dtype) -> str:
  shape, dtype = shape_and_dtype
  return f'{shape} {dtype}'


def model_summary(tree) -> str:
  """'7,340,032 parameters in 44 tensors, embedding (4224, 128)': enough to tell two models apart at a glance."""
  params = {name: shape for name, (shape, _) in _flat_shapes(tree).items() if name.startswith('params/')}
  count = sum(int(np.prod(shape)) for shape in params.values())
  embedding = next((shape for name, shape in sorted(params.items()) if name.endswith('/embedding')), None)
  return f'{count:,} parameters in {len(params)} tensors' + (f', embedding {embedding}' if embedding else '')


def check_same_tree(directory, step: int, meta: dict, stored, template) -> None:
  """Stops, changing nothing, when the stored state is not the tree of shapes and dtypes this run builds."""
  if stored is None:  # no item metadata (an older Orbax wrote it): the restore itself will tell
    return
  differences = tree_differences(stored, template)
  if not differences:
    return
  more = f'; and {len(differences) - 3} more tensors differ' if len(differences) > 3 else ''
  raise CheckpointMismatchError(
      f'the checkpoints in {directory} hold another model than this run builds (step {step}, stage '
      f'{meta.get("stage")}: the checkpoint has {model_summary(stored)}, this run {model_summary(template)}): '
      f'{"; ".join(differences[:3])}{more}. Nothing was changed: rerun with the settings that wrote this '
      f'MODEL_DIR (model preset, vocabulary, objective), or give a new MODEL_DIR.')


def check_same_processes(directory, step: int) -> None:
  """The data iterators were saved one per process: a run with another process count cannot continue them."""
  pattern = re.compile(r'process_\d+-of-(\d+)\.index$')
  counts = {int(m.group(1)) for m in map(pattern.match, _listdir(directory / str(step) / 'data')) if m}
  if counts and jax.process_count() not in counts:
    raise CheckpointMismatchError(
        f'the checkpoint at step {step} in {directory} was written by {sorted(counts)[0]} processes and this run has '
        f'{jax.process_count()}: the data iterators cannot be continued. Nothing was changed: run on '
        f'{sorted(counts)[0]} processes, or give a new MODEL_DIR.')


def _listdir(path) -> list[str]:
  try:
    return [p.name for p in path.iterdir()]  # an etils.epath.Path: local or gs://
  except OSError:
    return []


@contextlib.contextmanager
def _quiet_unraisable():
  """Orbax's abandoned reads print hundreds of 'Exception ignored' tracebacks; keep them for --debug only."""
  if log.isEnabledFor(logging.DEBUG):
    yield
    return
  previous, dropped = sys.unraisablehook, []
  sys.unraisablehook = dropped.append
  try:
    yield
  finally:
    gc.collect()
    sys.unraisablehook = previous
    if dropped:
      log.info('%d ignored errors of abandoned reads suppressed (SPACTOR_DEBUG=1 shows them)', len(dropped))


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
