"""Plain T5 params in and out of every checkpoint format the project knows, behind one loader.

A plain T5's params (the tree of `SpacTor(config)` without generator and RTD head) are passed around here as a
flat dict {'encoder/layers_0/attention/query/kernel': float32 numpy array, ...} together with their T5Config.
Formats (spactor.convert moves between them):
- `converted`: what `python -m spactor.convert` writes for this project: `<dir>/params` (an Orbax tree of the
  params) and `<dir>/spactor_t5.json` (the T5Config and where the weights came from);
- `run`: a model_dir of spactor.train or ssr.continual (`<dir>/checkpoints/<step>/state`), any stage: only the
  discriminator and the shared embedder are read;
- `hf`: a Hugging Face T5 directory (spactor.hf_checkpoint);
- `t5x`: a t5x checkpoint directory (spactor.t5x_checkpoint).
`load_params(path)` reads any of them, so every entry point that takes a checkpoint takes all four.

Config and tensors are checked before anything is used: a tensor the config does not have, one it needs that is
missing, or one of the wrong shape stops the load with a CheckpointError naming it; nothing is loaded partly.
"""
import dataclasses
import json
import os
import shutil
import tempfile
from typing import Iterable, Mapping, NamedTuple, Optional, Tuple

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from spactor import config as config_lib
from spactor.config import T5Config

CONVERTED_META = 'spactor_t5.json'
CONVERTED_PARAMS = 'params'
FORMATS = ('converted', 'run', 'hf', 't5x')
STAGE1_ONLY = ('generator', 'rtd_head')  # top-level keys a stage-1 run has besides the plain T5's
ARCHITECTURE_FIELDS = ('vocab_size', 'emb_dim', 'num_heads', 'head_dim', 'mlp_dim', 'num_encoder_layers',
                       'num_decoder_layers', 'mlp_activations', 'logits_via_embedding',
                       'relative_attention_num_buckets', 'relative_attention_max_distance')


class CheckpointError(ValueError):
  """A checkpoint that cannot be read as the requested model: its message names the file, tensor or field."""


class Loaded(NamedTuple):
  """What load_params returns: nested numpy params of a plain T5, its config, and where they came from."""
  params: dict
  config: T5Config
  format: str
  step: Optional[int]


# --- flat trees -----------------------------------------------------------------------------------------------


def flatten(params: Mapping) -> dict:
  """{'a/b/c': leaf} of a nested dict of params."""
  return {'/'.join(k): v for k, v in traverse_util.flatten_dict(dict(params)).items()}


def unflatten(flat: Mapping) -> dict:
  return traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in flat.items()})


def expected_shapes(config: T5Config) -> dict:
  """{flat name: shape} of the plain T5 params of `config`, from the model itself (no arrays are made)."""
  from spactor import model as model_lib  # the model pulls in Flax modules; keep `import checkpoint_io` light
  tokens = jnp.ones((1, 4), jnp.int32)
  abstract = jax.eval_shape(lambda: model_lib.SpacTor(config).init(jax.random.PRNGKey(0), tokens, tokens, tokens))
  return {name: tuple(leaf.shape) for name, leaf in flatten(abstract['params']).items()}


def _listing(names: Iterable[str], most: int = 6) -> str:
  names = sorted(names)
  more = f' and {len(names) - most} more' if len(names) > most else ''
  return ', '.join(names[:most]) + more


def check_tensors(found: Mapping[str, Tuple[int, ...]], expected: Mapping[str, Tuple[int, ...]], source: str,
                  what: str = 'the model') -> None:
  """Raises CheckpointError naming the missing, unexpected or misshapen tensors of `found` (name -> shape)."""
  missing = set(expected) - set(found)
  extra = set(found) - set(expected)
  if missing or extra:
    parts = ([f'missing tensor(s) {_listing(missing)}'] if missing else []) + (
        [f'unexpected tensor(s) {_listing(extra)}'] if extra else [])
    raise CheckpointError(f'{source} does not hold {what}: {"; ".join(parts)}. Nothing was loaded; check that the '
                          'checkpoint is a complete T5 of the expected version and size.')
  for name in sorted(expected):
    if tuple(found[name]) != tuple(expected[name]):
      raise CheckpointError(f'{source}: tensor {name} has shape {tuple(found[name])}, {what} needs '
                            f'{tuple(expected[name])}. Nothing was loaded.')


# --- configs ---------------------------------------------------------------------------------------------------


def config_to_json(config: T5Config) -> dict:
  """The architecture only: run settings (dtype, dropout, attention kernel) are the reader's, not the weights'."""
  fields = {f: getattr(config, f) for f in ARCHITECTURE_FIELDS}
  fields['mlp_activations'] = list(fields['mlp_activations'])
  return fields


def config_from_json(fields: Mapping, source: str) -> T5Config:
  known = {f.name for f in dataclasses.fields(T5Config)}
  unknown = set(fields) - known
  if unknown:
    raise CheckpointError(f'{source}: unknown T5Config field(s) {_listing(unknown)}')
  try:
    return T5Config(**fields)
  except (TypeError, ValueError) as e:
    raise CheckpointError(f'{source}: not a valid T5Config: {e}') from e


def version_of(config: T5Config) -> Optional[str]:
  """'t5_1_0' or 't5_1_1' when the config has that version's MLP and output style, else None."""
  for version, style in config_lib.VERSION_STYLE.items():
    if (config.mlp_activations, config.logits_via_embedding) == (style['mlp_activations'],
                                                                 style['logits_via_embedding']):
      return version
  return None


def infer_config(shapes: Mapping[str, Tuple[int, ...]], source: str) -> T5Config:
  """The T5Config of plain T5 params from their names and shapes alone (t5x and Orbax trees carry no config).

  Gated MLPs (wi_0, wi_1) are T5.1.1's gated GELU, a single `wi` is T5.1.0's ReLU; relative attention's
  max_distance is not in the weights and stays T5's 128.
  """
  def shape(name):
    if name not in shapes:
      raise CheckpointError(f'{source}: missing tensor {name}; this is not a T5 checkpoint of this project\'s '
                            'layout (token_embedder, encoder, decoder[, logits_dense])')
    return shapes[name]

  vocab_size, emb_dim = shape('token_embedder/embedding')
  num_heads, num_buckets = shape('encoder/relpos_bias/rel_embedding')
  layers = lambda stack: len({n.split('/')[1] for n in shapes if n.startswith(f'{stack}/layers_')})
  gated = 'encoder/layers_0/mlp/wi_0/kernel' in shapes
  mlp_dim = shape('encoder/layers_0/mlp/wi_0/kernel' if gated else 'encoder/layers_0/mlp/wi/kernel')[1]
  inner = shape('encoder/layers_0/attention/query/kernel')[1]
  if inner % num_heads:
    raise CheckpointError(f'{source}: attention width {inner} is not a multiple of {num_heads} heads')
  return T5Config(vocab_size=vocab_size, emb_dim=emb_dim, num_heads=num_heads, head_dim=inner // num_heads,
                  mlp_dim=mlp_dim, num_encoder_layers=layers('encoder'), num_decoder_layers=layers('decoder'),
                  mlp_activations=('gelu', 'linear') if gated else ('relu',),
                  logits_via_embedding='logits_dense/kernel' not in shapes,
                  relative_attention_num_buckets=num_buckets)


def check_same_architecture(found: T5Config, wanted: T5Config, source: str, wanted_name: str,
                            hint: str = 'Configure the model the checkpoint has (its size, version and vocabulary: '
                                        'the model gin file, or --size and --version).') -> None:
  """Raises CheckpointError naming every architecture field where the checkpoint differs from what was asked."""
  diffs = [f'{f}: checkpoint {getattr(found, f)!r}, {wanted_name} {getattr(wanted, f)!r}'
           for f in ARCHITECTURE_FIELDS if getattr(found, f) != getattr(wanted, f)]
  if diffs:
    raise CheckpointError(f'{source} is not {wanted_name}: {"; ".join(diffs)}. {hint}')


def check_preset(found: T5Config, size: str, version: str, source: str) -> None:
  """A checkpoint must match the requested preset size and version, with the checkpoint's vocabulary size."""
  wanted = config_lib.t5_preset(size, version, vocab_size=found.vocab_size)
  check_same_architecture(found, wanted, source, f'the preset {size}/{version}',
                          'Choose the preset that matches the checkpoint (or none: its own config is used).')


# --- this project's formats ------------------------------------------------------------------------------------


def require_new_directory(path: str) -> None:
  """Outputs never overwrite: an existing non-empty directory (or a file) at `path` is refused."""
  if os.path.isfile(path) or (os.path.isdir(path) and os.listdir(path)):
    raise CheckpointError(f'{path} already exists and is not empty; choose a new output directory '
                          '(nothing was written)')


def write_converted(directory: str, flat: Mapping[str, np.ndarray], config: T5Config, provenance: Mapping) -> str:
  """Writes params + config as `converted`; built in a temporary sibling and renamed, so a crash leaves nothing."""
  require_new_directory(directory)
  check_tensors({k: v.shape for k, v in flat.items()}, expected_shapes(config), 'the params to write')
  directory = os.path.abspath(directory)
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix='.' + os.path.basename(directory) + '.tmp-')
  try:
    with ocp.PyTreeCheckpointer() as checkpointer:
      checkpointer.save(os.path.join(tmp, CONVERTED_PARAMS), unflatten({k: np.asarray(v) for k, v in flat.items()}))
    with open(os.path.join(tmp, CONVERTED_META), 'w') as f:
      json.dump({'t5_config': config_to_json(config), 'version': version_of(config), **provenance}, f, indent=2)
    if os.path.isdir(directory):
      os.rmdir(directory)  # empty (checked above)
    os.rename(tmp, directory)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return directory


def _restore_numpy(path: str, shapes: Mapping[str, Tuple[int, ...]], partial: bool, dtypes: Mapping = None,
                   prefix: Tuple[str, ...] = ()):
  """Reads the named arrays (flat names under `prefix` in the saved tree) as float32 numpy; others are skipped."""
  item = unflatten({k: np.zeros(s, (dtypes or {}).get(k, np.float32)) for k, s in shapes.items()})
  restore = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  for key in reversed(prefix):
    item, restore = {key: item}, {key: restore}
  with ocp.PyTreeCheckpointer() as checkpointer:
    restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(item=item, restore_args=restore,
                                                                      partial_restore=partial))
  for key in prefix:
    restored = restored[key]
  return {k: np.asarray(v, np.float32) for k, v in flatten(restored).items()}


def _tree_shapes(path: str) -> dict:
  """{flat name: shape} of an Orbax PyTree checkpoint, from its metadata (no array is read)."""
  with ocp.PyTreeCheckpointer() as checkpointer:
    metadata = checkpointer.metadata(path)
  tree = getattr(metadata, 'item_metadata', None) or getattr(metadata, 'tree', None) or metadata
  tree = getattr(tree, 'tree', tree)
  return {k: tuple(v.shape) for k, v in flatten(tree).items() if hasattr(v, 'shape')}


def read_converted(directory: str) -> Tuple[dict, T5Config]:
  meta_path = os.path.join(directory, CONVERTED_META)
  with open(meta_path) as f:
    meta = json.load(f)
  config = config_from_json(meta.get('t5_config', {}), meta_path)
  params_path = os.path.join(os.path.abspath(directory), CONVERTED_PARAMS)
  expected = expected_shapes(config)
  check_tensors(_tree_shapes(params_path), expected, params_path, 'the T5 of ' + CONVERTED_META)
  return _restore_numpy(params_path, expected, partial=False), config


def run_steps(model_dir: str) -> list:
  directory = os.path.join(model_dir, 'checkpoints')
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def read_run(model_dir: str, step: Optional[int] = None) -> Tuple[dict, T5Config, int]:
  """The plain T5 of a spactor.train / ssr.continual run (any stage), its config (from the shapes) and step."""
  steps = run_steps(model_dir)
  if not steps:
    raise CheckpointError(f'no checkpoints under {os.path.join(model_dir, "checkpoints")}')
  step = steps[-1] if step is None else step
  if step not in steps:
    raise CheckpointError(f'no checkpoint step {step} in {model_dir} (steps: {steps})')
  state_path = os.path.join(os.path.abspath(model_dir), 'checkpoints', str(step), 'state')
  shapes = {k[len('params/'):]: v for k, v in _tree_shapes(state_path).items() if k.startswith('params/')}
  plain = {k: v for k, v in shapes.items() if k.split('/')[0] not in STAGE1_ONLY}
  config = infer_config(plain, state_path)
  expected = expected_shapes(config)
  check_tensors(plain, expected, state_path)
  return _restore_numpy(state_path, expected, partial=True, prefix=('params',)), config, step


# --- one loader for every entry point -------------------------------------------------------------------------


def detect_format(path: str) -> str:
  """Which of FORMATS the directory `path` holds; CheckpointError when none."""
  from spactor import hf_checkpoint, t5x_checkpoint
  if not os.path.exists(path):
    raise CheckpointError(f'checkpoint {path} does not exist')
  if os.path.isfile(os.path.join(path, CONVERTED_META)):
    return 'converted'
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    return 'run'
  if hf_checkpoint.is_hf_dir(path):
    return 'hf'
  if t5x_checkpoint.find_checkpoint(path, must=False):
    return 't5x'
  raise CheckpointError(
      f'{path} is not a checkpoint this project can read: expected a directory from `python -m spactor.convert` '
      f'({CONVERTED_META} + params/), a spactor.train/ssr.continual model_dir (checkpoints/<step>/), a Hugging Face '
      'T5 directory (config.json + model.safetensors[.index.json]) or a t5x checkpoint (checkpoint_<step>/ with a '
      '`checkpoint` file or a `state/` Orbax directory)')


def read_any(path: str, step: Optional[int] = None) -> Tuple[dict, T5Config, str, Optional[int]]:
  """(flat float32 params, config, format, step) of any supported checkpoint directory."""
  from spactor import hf_checkpoint, t5x_checkpoint
  fmt = detect_format(path)
  if fmt == 'converted':
    flat, config = read_converted(path)
    return flat, config, fmt, None
  if fmt == 'run':
    flat, config, step = read_run(path, step)
    return flat, config, fmt, step
  if fmt == 'hf':
    flat, config = hf_checkpoint.read(path)
    return flat, config, fmt, None
  flat, config, step = t5x_checkpoint.read(path, step)
  return flat, config, fmt, step


def load_params(path: str, config: Optional[T5Config] = None, step: Optional[int] = None) -> Loaded:
  """Plain T5 params (nested numpy float32) from any supported checkpoint, for an entry point's model.

  `config`: the model the caller will build; the checkpoint must have its architecture (dtype, dropout and other
  run settings are the caller's). `step` picks a step of a run or t5x directory (default: the newest).
  """
  flat, found, fmt, step = read_any(path, step)
  if config is not None:
    check_same_architecture(found, config, f'checkpoint {path} ({fmt})', 'the configured model')
  return Loaded(unflatten(flat), found, fmt, step)


def replace_t5_params(params, loaded: Mapping):
  """`params` (a plain T5's or a stage-1 tree, jax arrays) with its plain T5 part taken from `loaded` (numpy).

  Each loaded array is placed in the sharding of the array it replaces; the generator and RTD head of a stage-1
  tree are kept (a public T5 has none: they start from their initialization).
  """
  flat_loaded = flatten(loaded)
  flat = flatten(params)
  plain = {k for k in flat if k.split('/')[0] not in STAGE1_ONLY}
  check_tensors({k: v.shape for k, v in flat_loaded.items()}, {k: tuple(flat[k].shape) for k in plain},
                'the loaded checkpoint', 'the model being trained')
  placed = {k: (jax.device_put(flat_loaded[k].astype(flat[k].dtype), flat[k].sharding) if k in plain else flat[k])
            for k in flat}
  return unflatten(placed)
