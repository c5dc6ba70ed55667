"""A restart never loses a run's checkpoints: only files that cannot be read are set aside, never all of them.

Small states (a few arrays, no model) written and read through spactor.checkpointing, so each test takes about a
second: a state of another shape, or a run with another process count, stops with one paragraph and changes
nothing; damaged newer steps are set aside only when an older one can be read.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from spactor import checkpointing
from spactor.errors import UsageError


def toy_state(step: int, width: int = 8) -> checkpointing.TrainState:
  params = {'embedding': jnp.full((4, width), float(step)), 'dense': {'kernel': jnp.ones((width, 3))}}
  return checkpointing.TrainState(step=jnp.asarray(step, jnp.int32), params=params,
                                  opt_state=({'count': jnp.zeros((), jnp.int32)},))


def abstract(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def data_iterator():
  return iter(tf.data.Dataset.range(100))


def write_run(model_dir, steps=(3, 6)) -> None:
  manager = checkpointing.make_manager(str(model_dir), keep=5)
  iterator = data_iterator()
  for step in steps:
    next(iterator)
    checkpointing.save(manager, toy_state(step), iterator, {'stage': 'hybrid', 'step': step})
  manager.close()


def listing(model_dir) -> list[str]:
  return sorted(os.listdir(os.path.join(model_dir, 'checkpoints')))


def damage(model_dir, step: int) -> None:
  """Overwrites every file of a step's state: nothing of it can be read any more."""
  for root, _, files in os.walk(os.path.join(model_dir, 'checkpoints', str(step), 'state')):
    for name in files:
      with open(os.path.join(root, name), 'wb') as f:
        f.write(b'garbage')


def restore(model_dir, template):
  manager = checkpointing.make_manager(str(model_dir))
  try:
    return checkpointing.restore_latest(manager, lambda meta: template, data_iterator())
  finally:
    manager.close()


def test_a_state_of_another_shape_stops_naming_the_tensor_and_changes_nothing(tmp_path):
  write_run(tmp_path)
  before = listing(tmp_path)
  with pytest.raises(checkpointing.CheckpointMismatchError) as error:
    restore(tmp_path, abstract(toy_state(0, width=16)))
  message = str(error.value)
  assert isinstance(error.value, UsageError)
  assert 'params/embedding' in message and '(4, 8)' in message and '(4, 16)' in message, message
  assert '\n' not in message and 'Nothing was changed' in message
  assert listing(tmp_path) == before  # no step renamed or deleted


def test_a_state_with_another_tree_stops_naming_the_missing_tensor(tmp_path):
  write_run(tmp_path)
  state = toy_state(0)
  template = abstract(state.replace(params={**state.params, 'generator': jnp.zeros((2,))}))
  with pytest.raises(checkpointing.CheckpointMismatchError, match='params/generator'):
    restore(tmp_path, template)
  assert listing(tmp_path) == ['3', '6']


def test_a_checkpoint_written_by_another_process_count_stops_and_changes_nothing(tmp_path):
  write_run(tmp_path)
  for step in ('3', '6'):  # as if two processes had written it
    data = os.path.join(tmp_path, 'checkpoints', step, 'data')
    for name in os.listdir(data):
      if name.startswith('process_0-of-1'):
        os.rename(os.path.join(data, name), os.path.join(data, name.replace('process_0-of-1', 'process_0-of-2')))
  with pytest.raises(checkpointing.CheckpointMismatchError, match='2 processes'):
    restore(tmp_path, abstract(toy_state(0)))
  assert listing(tmp_path) == ['3', '6']


def test_damaged_newest_step_is_set_aside_and_the_previous_one_restored(tmp_path, capfd):
  write_run(tmp_path)
  damage(tmp_path, 6)
  state, meta = restore(tmp_path, abstract(toy_state(0)))
  assert meta['step'] == 3 and int(state.step) == 3
  np.testing.assert_array_equal(state.params['embedding'], np.full((4, 8), 3.0))
  names = listing(tmp_path)
  assert names[0] == '3' and names[1].startswith('6.damaged-') and len(names) == 2
  assert 'Traceback' not in capfd.readouterr().err


def test_when_no_checkpoint_can_be_read_the_run_stops_and_leaves_them_as_they_are(tmp_path):
  write_run(tmp_path)
  damage(tmp_path, 3)
  damage(tmp_path, 6)
  with pytest.raises(checkpointing.UnreadableCheckpointsError) as error:
    restore(tmp_path, abstract(toy_state(0)))
  assert '[6, 3]' in str(error.value) and '\n' not in str(error.value)
  assert listing(tmp_path) == ['3', '6']
