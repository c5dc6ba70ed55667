"""Hugging Face T5 / T5.1.1 checkpoints (`config.json` + `model.safetensors`, or shards with their index file).

Read and written with the `safetensors` package's numpy API, so neither torch nor transformers is needed here.
Layout (PyTorch Linear weights are [out, in]; the project's kernels are [in, out], so every kernel is transposed):
- `shared.weight` [vocab, d_model] is the token embedding; `encoder.embed_tokens.weight` and
  `decoder.embed_tokens.weight`, when a file has them, are copies of it (checked, not loaded twice);
- `{encoder,decoder}.block.0.layer.0.SelfAttention.relative_attention_bias.weight` [buckets, heads] is the stack's
  one relative position bias (later blocks have none: T5 shares block 0's with every layer);
- per block: SelfAttention (+ EncDecAttention in the decoder) q/k/v/o, the layer norm in front of each sublayer,
  DenseReluDense wi (T5.1.0) or wi_0 (GELU) and wi_1 (linear) (T5.1.1's gated GELU), wo; `final_layer_norm`;
- `lm_head.weight` [vocab, d_model]: T5.1.1's untied output projection. With tied embeddings (T5.1.0) the
  decoder output is scaled by d_model**-0.5 before the tied projection, as the project's `logits_via_embedding`.

config.json: `tie_word_embeddings` missing means tied (transformers' default; public T5.1.0 files lack it).
transformers 5.x keys the output scaling on `scale_decoder_outputs` and always sets `tie_word_embeddings: true`:
a T5.1.1 it builds itself has its lm_head tied to the embedding, unscaled, and no `lm_head.weight` in its file,
while it loads a file whose lm_head differs from the embedding untied. So the output is read as:
- scaled (`scale_decoder_outputs`, else `tie_word_embeddings`, true): T5.1.0, tied; a stored lm_head must be a copy;
- unscaled: T5.1.1's `logits_dense`, from `lm_head.weight`, or from `shared.weight` when the file ties them (5.x).
Files written here say `tie_word_embeddings` and `scale_decoder_outputs` alike (false for T5.1.1, with its own
`lm_head.weight`; true for T5.1.0, without one), which 4.x and 5.x both load as the same model (checked with
4.57 and 5.24: equal logits).
"""
import contextlib
import json
import os
from typing import Mapping, Optional, Tuple

import numpy as np
from safetensors import SafetensorError
from safetensors import numpy as st_numpy
from safetensors import safe_open

from spactor.checkpoint_io import CheckpointError, check_tensors, version_of
from spactor.config import T5Config

CONFIG_FILE = 'config.json'
WEIGHTS_FILE = 'model.safetensors'
INDEX_FILE = 'model.safetensors.index.json'
LAYER_NORM_EPSILON = 1e-6  # the project's LayerNorm
ACTIVATIONS = {'relu': ('relu',), 'gated-gelu': ('gelu', 'linear')}  # feed_forward_proj -> mlp_activations
EMBEDDING_COPIES = ('encoder.embed_tokens.weight', 'decoder.embed_tokens.weight')
# transformers' own _keys_to_ignore_on_load_unexpected: an unused bias some old T5 files carry (e.g. t5-base).
UNUSED = ('decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight',)


def is_hf_dir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, CONFIG_FILE)) and (
      os.path.isfile(os.path.join(path, WEIGHTS_FILE)) or os.path.isfile(os.path.join(path, INDEX_FILE)))


# --- config.json <-> T5Config ---------------------------------------------------------------------------------


def config_from_hf(hf: Mapping, source: str = CONFIG_FILE) -> T5Config:
  """The project's T5Config of a transformers T5Config dict; CheckpointError for what the project's T5 lacks."""
  def need(key):
    if key not in hf:
      raise CheckpointError(f'{source} has no `{key}`: not a T5 config')
    return hf[key]

  if hf.get('model_type', 't5') != 't5':
    raise CheckpointError(f'{source}: model_type {hf.get("model_type")!r}, only T5 (model_type "t5") is supported')
  proj = hf.get('feed_forward_proj', 'relu')
  if proj not in ACTIVATIONS:
    raise CheckpointError(f'{source}: feed_forward_proj {proj!r} is not supported; the project\'s T5 has '
                          f'{sorted(ACTIVATIONS)}')
  epsilon = hf.get('layer_norm_epsilon', LAYER_NORM_EPSILON)
  if not np.isclose(epsilon, LAYER_NORM_EPSILON, rtol=1e-3, atol=0):
    raise CheckpointError(f'{source}: layer_norm_epsilon {epsilon} differs from the project\'s {LAYER_NORM_EPSILON}')
  tied = hf.get('tie_word_embeddings', True)
  scaled = hf.get('scale_decoder_outputs', tied)
  if scaled and not tied:
    raise CheckpointError(f'{source}: scale_decoder_outputs true with tie_word_embeddings false; the project\'s T5 '
                          'scales the decoder output only for the tied output embedding (T5.1.0)')
  layers = need('num_layers')
  return T5Config(vocab_size=need('vocab_size'), emb_dim=need('d_model'), num_heads=need('num_heads'),
                  head_dim=need('d_kv'), mlp_dim=need('d_ff'), num_encoder_layers=layers,
                  num_decoder_layers=hf.get('num_decoder_layers') or layers, mlp_activations=ACTIVATIONS[proj],
                  logits_via_embedding=bool(scaled),
                  relative_attention_num_buckets=hf.get('relative_attention_num_buckets', 32),
                  relative_attention_max_distance=hf.get('relative_attention_max_distance', 128))


def config_to_hf(config: T5Config) -> dict:
  """A config.json that transformers 4.x and 5.x both read as this T5 (the extra keys are kept as attributes)."""
  proj = {v: k for k, v in ACTIVATIONS.items()}.get(tuple(config.mlp_activations))
  if proj is None:
    raise CheckpointError(f'mlp_activations {config.mlp_activations} has no Hugging Face T5 equivalent')
  tied = bool(config.logits_via_embedding)
  return {
      'architectures': ['T5ForConditionalGeneration'], 'model_type': 't5', 'is_encoder_decoder': True,
      'vocab_size': config.vocab_size, 'd_model': config.emb_dim, 'd_kv': config.head_dim, 'd_ff': config.mlp_dim,
      'num_layers': config.num_encoder_layers, 'num_decoder_layers': config.num_decoder_layers,
      'num_heads': config.num_heads, 'relative_attention_num_buckets': config.relative_attention_num_buckets,
      'relative_attention_max_distance': config.relative_attention_max_distance, 'dropout_rate': 0.1,
      'layer_norm_epsilon': LAYER_NORM_EPSILON, 'initializer_factor': 1.0, 'feed_forward_proj': proj,
      'tie_word_embeddings': tied, 'scale_decoder_outputs': tied, 'use_cache': True,
      'pad_token_id': 0, 'eos_token_id': 1, 'decoder_start_token_id': 0,
  }


# --- tensor names ---------------------------------------------------------------------------------------------


def _attention(hf: str, ours: str) -> dict:
  return {f'{hf}.{a}.weight': (f'{ours}/{b}/kernel', True)
          for a, b in (('q', 'query'), ('k', 'key'), ('v', 'value'), ('o', 'out'))}


def _mlp(hf: str, ours: str, config: T5Config) -> dict:
  names = ['wi'] if len(config.mlp_activations) == 1 else [f'wi_{i}' for i in range(len(config.mlp_activations))]
  table = {f'{hf}.{n}.weight': (f'{ours}/{n}/kernel', True) for n in names}
  table[f'{hf}.wo.weight'] = (f'{ours}/wo/kernel', True)
  return table


def name_table(config: T5Config) -> dict:
  """{Hugging Face tensor name: (project flat name, transposed)} of every tensor a T5 of `config` stores."""
  table = {'shared.weight': ('token_embedder/embedding', False)}
  for stack, num_layers in (('encoder', config.num_encoder_layers), ('decoder', config.num_decoder_layers)):
    table[f'{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight'] = (
        f'{stack}/relpos_bias/rel_embedding', True)
    for i in range(num_layers):
      hf, ours = f'{stack}.block.{i}.layer', f'{stack}/layers_{i}'
      self_name = 'attention' if stack == 'encoder' else 'self_attention'
      table.update(_attention(f'{hf}.0.SelfAttention', f'{ours}/{self_name}'))
      table[f'{hf}.0.layer_norm.weight'] = (
          f'{ours}/pre_{"attention" if stack == "encoder" else "self_attention"}_layer_norm/scale', False)
      mlp_index = 1
      if stack == 'decoder':
        table.update(_attention(f'{hf}.1.EncDecAttention', f'{ours}/encoder_decoder_attention'))
        table[f'{hf}.1.layer_norm.weight'] = (f'{ours}/pre_cross_attention_layer_norm/scale', False)
        mlp_index = 2
      table.update(_mlp(f'{hf}.{mlp_index}.DenseReluDense', f'{ours}/mlp', config))
      table[f'{hf}.{mlp_index}.layer_norm.weight'] = (f'{ours}/pre_mlp_layer_norm/scale', False)
    table[f'{stack}.final_layer_norm.weight'] = (f'{stack}/{stack}_norm/scale', False)
  if not config.logits_via_embedding:
    table['lm_head.weight'] = ('logits_dense/kernel', True)
  return table


def hf_shapes(config: T5Config, project_shapes: Mapping[str, Tuple[int, ...]]) -> dict:
  return {hf: tuple(reversed(project_shapes[ours])) if transposed else tuple(project_shapes[ours])
          for hf, (ours, transposed) in name_table(config).items()}


# --- files ----------------------------------------------------------------------------------------------------


def _read_json(path: str) -> dict:
  """A JSON object from `path`; CheckpointError naming the file when it is unreadable or not a JSON object."""
  try:
    with open(path) as f:
      value = json.load(f)
  except (OSError, UnicodeDecodeError, ValueError) as e:
    raise CheckpointError(f'{path} cannot be read as JSON ({e}); the Hugging Face checkpoint is damaged or '
                          'incomplete: copy it again') from None
  if not isinstance(value, dict):
    raise CheckpointError(f'{path} holds a JSON {type(value).__name__}, not an object: not a Hugging Face file')
  return value


@contextlib.contextmanager
def _open_safetensors(path: str):
  """safe_open(path) whose failures (truncated or damaged file, bad header) are a CheckpointError naming it."""
  try:
    handle = safe_open(path, framework='np')
  except (SafetensorError, OSError) as e:
    raise CheckpointError(f'{path} is not a readable safetensors file ({e}); the checkpoint is damaged or '
                          'incomplete: copy it again') from None
  with handle as f:
    yield f



def _weight_files(directory: str) -> dict:
  """{tensor name: file} from the index of a sharded checkpoint, else every tensor of model.safetensors."""
  index_path = os.path.join(directory, INDEX_FILE)
  if os.path.isfile(index_path):
    weight_map = _read_json(index_path).get('weight_map')
    if not isinstance(weight_map, dict):
      raise CheckpointError(f'{index_path} has no weight_map')
    for shard in set(weight_map.values()):
      if not os.path.isfile(os.path.join(directory, shard)):
        raise CheckpointError(f'{index_path} names the shard {shard}, which is not in {directory}')
    return {name: os.path.join(directory, shard) for name, shard in weight_map.items()}
  path = os.path.join(directory, WEIGHTS_FILE)
  with _open_safetensors(path) as f:
    return {name: path for name in f.keys()}


def _shapes_in(files: Mapping[str, str]) -> dict:
  shapes = {}
  for path in sorted(set(files.values())):
    with _open_safetensors(path) as f:
      for name in f.keys():
        if files.get(name) == path:
          shapes[name] = tuple(f.get_slice(name).get_shape())
  return shapes


def _read_tensors(files: Mapping[str, str], names) -> dict:
  tensors = {}
  for path in sorted({files[n] for n in names}):
    with _open_safetensors(path) as f:
      for name in names:
        if files[name] == path:
          tensors[name] = _as_float32(f, name, path)
  return tensors


def _as_float32(f, name: str, path: str) -> np.ndarray:
  """float32 copy of a tensor; bfloat16, which numpy lacks, is read from the file's bytes as ml_dtypes.bfloat16."""
  if f.get_slice(name).get_dtype() == 'BF16':
    return _read_bfloat16(path, name)
  return np.asarray(f.get_tensor(name), np.float32)


def _read_bfloat16(path: str, name: str) -> np.ndarray:
  """A bfloat16 tensor by the safetensors layout: u64 header size, JSON header (dtype, shape, data_offsets), data."""
  import ml_dtypes  # comes with jax
  with open(path, 'rb') as f:
    header_size = int.from_bytes(f.read(8), 'little')
    entry = json.loads(f.read(header_size))[name]
    start, end = entry['data_offsets']
    f.seek(8 + header_size + start)
    data = f.read(end - start)
  return np.frombuffer(data, ml_dtypes.bfloat16).reshape(entry['shape']).astype(np.float32)


def read(directory: str) -> Tuple[dict, T5Config]:
  """(flat float32 project params, T5Config) of a Hugging Face T5 directory, checked tensor by tensor."""
  from spactor.checkpoint_io import expected_shapes
  config_path = os.path.join(directory, CONFIG_FILE)
  if not is_hf_dir(directory):
    raise CheckpointError(f'{directory} is not a Hugging Face checkpoint: it needs {CONFIG_FILE} and {WEIGHTS_FILE} '
                          f'or {INDEX_FILE} (a checkpoint with only pytorch_model.bin must be saved again with '
                          'save_pretrained(..., safe_serialization=True) first)')
  hf_config = _read_json(config_path)
  config = config_from_hf(hf_config, config_path)
  files = _weight_files(directory)
  found = {n: shape for n, shape in _shapes_in(files).items() if n not in UNUSED}
  table = name_table(config)
  expected = hf_shapes(config, expected_shapes(config))
  # transformers 5.x ties an unscaled lm_head to the embedding and then stores none: the embedding is the head.
  head_is_embedding = (not config.logits_via_embedding and hf_config.get('tie_word_embeddings', True)
                       and 'lm_head.weight' not in found)
  if head_is_embedding:
    found = dict(found, **{'lm_head.weight': found.get('shared.weight')})
  copies = [n for n in EMBEDDING_COPIES + (('lm_head.weight',) if config.logits_via_embedding else ()) if n in found]
  check_tensors({n: s for n, s in found.items() if n not in copies}, expected, directory,
                f'the T5 of its {CONFIG_FILE}')
  if head_is_embedding:
    files = dict(files, **{'lm_head.weight': files['shared.weight']})
  tensors = _read_tensors(files, [n for n in table if not (head_is_embedding and n == 'lm_head.weight')] + copies)
  if head_is_embedding:
    tensors['lm_head.weight'] = tensors['shared.weight']
  for name in copies:  # tied copies must really be copies: an untied one would be silently dropped otherwise
    if tensors[name].shape != tensors['shared.weight'].shape or not np.array_equal(tensors[name],
                                                                                  tensors['shared.weight']):
      raise CheckpointError(f'{directory}: tensor {name} differs from shared.weight, but {CONFIG_FILE} ties them '
                            '(tie_word_embeddings missing or true); the project\'s T5 has one shared embedding')
  flat = {ours: (tensors[hf].T if transposed else tensors[hf]).copy() for hf, (ours, transposed) in table.items()}
  return flat, config


def write(directory: str, flat: Mapping[str, np.ndarray], config: T5Config, max_shard_bytes: Optional[int] = None,
          provenance: Optional[Mapping] = None) -> str:
  """Writes config.json and model.safetensors (or shards of at most max_shard_bytes plus the index file)."""
  from spactor import checkpoint_io
  checkpoint_io.require_new_directory(directory)
  checkpoint_io.check_tensors({k: v.shape for k, v in flat.items()}, checkpoint_io.expected_shapes(config),
                              'the params to write')
  hf_config = config_to_hf(config)
  tensors = {hf: np.ascontiguousarray((flat[ours].T if transposed else flat[ours]).astype(np.float32))
             for hf, (ours, transposed) in name_table(config).items()}
  os.makedirs(directory, exist_ok=True)
  metadata = {'format': 'pt'}  # transformers refuses safetensors files without it
  shards = _shards(tensors, max_shard_bytes)
  if len(shards) == 1:
    st_numpy.save_file(tensors, os.path.join(directory, WEIGHTS_FILE), metadata=metadata)
  else:
    weight_map = {}
    for i, names in enumerate(shards):
      filename = f'model-{i + 1:05d}-of-{len(shards):05d}.safetensors'
      st_numpy.save_file({n: tensors[n] for n in names}, os.path.join(directory, filename), metadata=metadata)
      weight_map.update({n: filename for n in names})
    index = {'metadata': {'total_size': int(sum(t.nbytes for t in tensors.values()))}, 'weight_map': weight_map}
    with open(os.path.join(directory, INDEX_FILE), 'w') as f:
      json.dump(index, f, indent=2)
  if provenance:
    hf_config['spactor_provenance'] = dict(provenance, version=version_of(config))
  with open(os.path.join(directory, CONFIG_FILE), 'w') as f:  # last: a directory without it is not a checkpoint
    json.dump(hf_config, f, indent=2)
  return directory


def _shards(tensors: Mapping[str, np.ndarray], max_shard_bytes: Optional[int]) -> list:
  """Tensor names grouped in file order so no group exceeds max_shard_bytes (a larger tensor gets its own)."""
  if not max_shard_bytes:
    return [list(tensors)]
  shards, current, size = [], [], 0
  for name, tensor in tensors.items():
    if current and size + tensor.nbytes > max_shard_bytes:
      shards.append(current)
      current, size = [], 0
    current.append(name)
    size += tensor.nbytes
  return shards + [current]
