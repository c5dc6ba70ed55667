"""t5x checkpoints: the public T5.1.0 / T5.1.1 t5x releases and the checkpoints of `t5x.train` runs.

t5x (checkpoints.py, commit cc342d4) has two on-disk formats of one state dict {'target': params, 'state':
{'step', 'param_states': optimizer slots}}:
- legacy (the public releases; t5x's `Checkpointer`): `checkpoint_<step>/checkpoint`, a msgpack file
  {'version': 3, 'optimizer': state dict} whose large arrays are tensorstore spec dicts pointing at zarr arrays
  (gzip) in sibling directories named by the dotted path (`target.encoder.layers_0.attention.query.kernel`),
  relative to the checkpoint directory (written with a gcs kvstore on GCS, a file one elsewhere); small arrays
  sit in the msgpack itself;
- Orbax (t5x.train's default `OrbaxCheckpointManagerInterface`): `checkpoint_<step>/state/`, an Orbax PyTree
  (OCDBT) of the same state dict.
Both are read (only `target`; optimizer slots are not needed); the legacy format is written, since it is the one
of the public releases and t5x restores it with either checkpoint manager. A written checkpoint has no optimizer
slots: t5x takes them from scratch when restoring with `RestoreCheckpointConfig(fallback_to_scratch=True,
assignment_map=[('state/param_states.*', None)])` (checked with t5x.train, docs/checkpoints.md).

t5x's examples/t5/network.py param tree equals the project's except for T5.1.1's untied output projection, which
t5x keeps at `decoder/logits_dense` and the project at the top level (`logits_dense`); checkpoints of this
project's models under t5x.train (gin/t5x) have the project's layout, and both are read. Written checkpoints have
t5x's network layout, the one of the public releases.
"""
import os
import re
import shutil
import tempfile
from typing import Mapping, Optional, Tuple

from flax import serialization
import numpy as np
import tensorstore as ts

from spactor import checkpoint_io
from spactor.checkpoint_io import CheckpointError
from spactor.config import T5Config

MSGPACK_FILE = 'checkpoint'
ORBAX_STATE = 'state'
VERSION = 3  # t5x checkpoints.VERSION
CHUNK_BYTES = 64 * 1024 ** 2  # t5x's _DESIRED_CHUNK_SIZE_BYTES
# t5x's examples/t5 network fixes its relative attention to T5's 32 buckets up to distance 128.
T5X_RELATIVE_ATTENTION = {'relative_attention_num_buckets': 32, 'relative_attention_max_distance': 128}
RENAMED = {'decoder/logits_dense/kernel': 'logits_dense/kernel'}  # t5x name -> project name


def to_project_name(name: str) -> str:
  return RENAMED.get(name, name)


def to_t5x_name(name: str) -> str:
  return {v: k for k, v in RENAMED.items()}.get(name, name)


def _step_dirs(model_dir: str) -> dict:
  found = {}
  for name in os.listdir(model_dir):
    match = re.fullmatch(r'checkpoint_(\d+)', name)
    if match and os.path.isdir(os.path.join(model_dir, name)):
      found[int(match.group(1))] = os.path.join(model_dir, name)
  return found


def _is_step_dir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, MSGPACK_FILE)) or os.path.isdir(os.path.join(path, ORBAX_STATE))


def find_checkpoint(path: str, step: Optional[int] = None, must: bool = True) -> Optional[str]:
  """The checkpoint_<step> directory of `path` (itself, its msgpack file's directory, or a step of a model_dir)."""
  if os.path.isfile(path) and os.path.basename(path) == MSGPACK_FILE:
    return os.path.dirname(os.path.abspath(path))
  if os.path.isdir(path) and _is_step_dir(path):
    return os.path.abspath(path)
  steps = _step_dirs(path) if os.path.isdir(path) else {}
  steps = {s: d for s, d in steps.items() if _is_step_dir(d)}
  if steps and (step is None or step in steps):
    return os.path.abspath(steps[max(steps) if step is None else step])
  if must:
    raise CheckpointError(f'{path} holds no t5x checkpoint' + (f' for step {step} (steps: {sorted(steps)})' if steps
                                                               else ': expected checkpoint_<step>/ directories with '
                                                               f'a `{MSGPACK_FILE}` file or a `{ORBAX_STATE}/` dir'))
  return None


# --- reading ------------------------------------------------------------------------------------------------


def _is_spec(leaf) -> bool:
  return isinstance(leaf, dict) and 'driver' in leaf


def _local_spec(spec: Mapping, checkpoint_dir: str) -> dict:
  """A spec reading the zarr array from the checkpoint directory, whatever kvstore (gcs, file) wrote it."""
  if spec.get('driver') == 'cast':
    return _local_spec(spec['base'], checkpoint_dir)
  spec = dict(spec)
  kvstore = dict(spec.get('kvstore') or {})
  relative = spec.pop('path', None) or kvstore.get('path')
  if not relative:
    raise CheckpointError(f'{checkpoint_dir}: a tensorstore spec without a path: {spec}')
  path = relative if os.path.isabs(relative) else os.path.join(checkpoint_dir, relative)
  spec['kvstore'] = {'driver': 'file', 'path': path}
  for key in ('dtype', 'metadata'):  # the zarr array's own .zarray has them
    spec.pop(key, None)
  return spec


def _read_legacy_target(checkpoint_dir: str) -> Tuple[dict, Optional[int], dict]:
  """(flat {t5x name: spec or array}, step, {t5x name: shape}) of the msgpack file's `target`."""
  path = os.path.join(checkpoint_dir, MSGPACK_FILE)
  try:
    with open(path, 'rb') as f:
      contents = serialization.msgpack_restore(f.read())
  except (OSError, ValueError) as e:  # msgpack's errors on a truncated or damaged file are ValueErrors
    raise CheckpointError(f'{path} cannot be read as a t5x msgpack checkpoint ({e}); the checkpoint is damaged or '
                          'incomplete: copy it again') from None
  if not isinstance(contents, dict):
    raise CheckpointError(f'{path} is not a t5x msgpack checkpoint')
  state = contents.get('optimizer', contents)
  if 'target' not in state:
    raise CheckpointError(f'{path} has no `target` (params): not a t5x checkpoint (keys: {sorted(state)})')
  step = state.get('state', {}).get('step')
  leaves = {}
  _collect_leaves(state['target'], '', leaves)
  shapes = {n: _spec_shape(v) if _is_spec(v) else np.asarray(v).shape for n, v in leaves.items()}
  return leaves, (None if step is None else int(np.asarray(step))), shapes


def _spec_shape(spec: Mapping) -> tuple:
  spec = spec['base'] if spec.get('driver') == 'cast' else spec
  return tuple(int(d) for d in spec['metadata']['shape'])


def _collect_leaves(tree, prefix: str, out: dict) -> None:
  """Flat {name: array or spec dict}: a dict with a `driver` is one tensor's spec, not a subtree."""
  for key, value in tree.items():
    name = f'{prefix}/{key}' if prefix else key
    if isinstance(value, dict) and not _is_spec(value):
      _collect_leaves(value, name, out)
    else:
      out[name] = value


def _read_zarr(spec: Mapping, checkpoint_dir: str, name: str) -> np.ndarray:
  try:
    return np.asarray(ts.open(_local_spec(spec, checkpoint_dir), open=True).result().read().result(), np.float32)
  except (ValueError, OSError) as e:
    raise CheckpointError(f'{checkpoint_dir}: tensor {name} cannot be read ({e})') from e


def read(path: str, step: Optional[int] = None) -> Tuple[dict, T5Config, Optional[int]]:
  """(flat float32 project params, T5Config from the shapes, step) of a t5x checkpoint (legacy or Orbax).

  Two param layouts are read: t5x's examples/t5 network (`decoder/logits_dense`) and this project's SpacTor as
  t5x.train runs it with gin/t5x (top-level `logits_dense`; a stage-1 run also has `generator` and `rtd_head`,
  which are left out: the discriminator and the shared embedder are the T5).
  """
  checkpoint_dir = find_checkpoint(path, step)
  orbax_dir = os.path.join(checkpoint_dir, ORBAX_STATE)
  if os.path.isdir(orbax_dir):
    shapes = {k[len('target/'):]: v for k, v in checkpoint_io._tree_shapes(orbax_dir).items()
              if k.startswith('target/')}
    if not shapes:
      raise CheckpointError(f'{orbax_dir} has no `target` (params): not a t5x checkpoint')
    shapes = _plain(shapes)
    config, rename = _config_of(shapes, checkpoint_dir)
    arrays = checkpoint_io._restore_numpy(orbax_dir, shapes, partial=True, prefix=('target',))
    found_step = _orbax_step(orbax_dir)
  else:
    leaves, found_step, shapes = _read_legacy_target(checkpoint_dir)
    shapes = _plain(shapes)
    config, rename = _config_of(shapes, checkpoint_dir)
    arrays = {n: _read_zarr(v, checkpoint_dir, n) if _is_spec(v) else np.asarray(v, np.float32)
              for n, v in leaves.items() if n in shapes}
  return {rename(n): a for n, a in arrays.items()}, config, found_step


def _plain(shapes: Mapping[str, tuple]) -> dict:
  """The T5's tensors: a SpacTor stage-1 run's generator and RTD head are not part of it."""
  return {n: s for n, s in shapes.items() if n.split('/')[0] not in checkpoint_io.STAGE1_ONLY}


def _config_of(shapes: Mapping[str, tuple], checkpoint_dir: str):
  """(config from the shapes, t5x name -> project name), every tensor checked under its name in the checkpoint."""
  project_layout = 'logits_dense/kernel' in shapes  # this project's model under t5x.train
  rename = (lambda n: n) if project_layout else to_project_name
  config = checkpoint_io.infer_config({rename(n): s for n, s in shapes.items()}, checkpoint_dir)
  expected = checkpoint_io.expected_shapes(config)
  if not project_layout:
    expected = {to_t5x_name(n): s for n, s in expected.items()}
  checkpoint_io.check_tensors(shapes, expected, checkpoint_dir, 'a T5 (t5x target)')
  return config, rename


def _orbax_step(orbax_dir: str) -> Optional[int]:
  match = re.search(r'checkpoint_(\d+)', os.path.basename(os.path.dirname(orbax_dir)))
  return int(match.group(1)) if match else None


# --- writing ------------------------------------------------------------------------------------------------


def _chunks(shape: Tuple[int, ...], itemsize: int) -> list:
  """Largest divisors of the shape within CHUNK_BYTES, splitting the largest axis first (as t5x)."""
  chunks = list(shape)
  while np.prod(chunks) * itemsize > CHUNK_BYTES:
    axis = int(np.argmax(chunks))
    divisors = [d for d in range(1, chunks[axis]) if shape[axis] % d == 0]
    chunks[axis] = divisors[-1] if divisors else 1
  return chunks


def _spec(name: str, array: np.ndarray) -> dict:
  """The spec dict t5x records in the msgpack for an array written to tensorstore (relative file path)."""
  return {'driver': 'zarr', 'dtype': 'float32', 'kvstore': {'driver': 'file', 'path': name.replace('/', '.')},
          'metadata': {'compressor': {'id': 'gzip'}, 'shape': list(array.shape),
                       'chunks': _chunks(array.shape, array.dtype.itemsize)}}


def write(model_dir: str, flat: Mapping[str, np.ndarray], config: T5Config, step: int = 0) -> str:
  """Writes `model_dir/checkpoint_<step>` in t5x's legacy format (msgpack + zarr); returns that directory."""
  checkpoint_io.require_new_directory(model_dir)
  checkpoint_io.check_tensors({k: v.shape for k, v in flat.items()}, checkpoint_io.expected_shapes(config),
                              'the params to write')
  for field, value in T5X_RELATIVE_ATTENTION.items():
    if getattr(config, field) != value:
      raise CheckpointError(f'{field} is {getattr(config, field)}, but t5x\'s T5 network fixes it to {value}: this '
                            'model has no t5x equivalent (nothing was written)')
  final = os.path.join(os.path.abspath(model_dir), f'checkpoint_{step}')
  os.makedirs(model_dir, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=model_dir, prefix=f'checkpoint_{step}.tmp-')  # t5x's own temporary naming
  try:
    target = {}
    for name, array in flat.items():
      t5x_name = 'target/' + to_t5x_name(name)
      array = np.ascontiguousarray(array, np.float32)
      spec = _spec(t5x_name, array)
      local = dict(spec, kvstore={'driver': 'file', 'path': os.path.join(tmp, spec['kvstore']['path'])})
      ts.open(local, create=True, open=True).result().write(array).result()
      target[to_t5x_name(name)] = spec
    contents = {'version': VERSION, 'optimizer': {'target': checkpoint_io.unflatten(target),
                                                  'state': {'step': np.int32(step)}}}
    with open(os.path.join(tmp, MSGPACK_FILE), 'wb') as f:
      f.write(serialization.msgpack_serialize(contents))
    os.rename(tmp, final)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return final
