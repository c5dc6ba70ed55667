"""Checkpoint conversion: parity with the original implementations, bit-exact round trips, and named errors.

The fixtures (tests/fixtures/convert, made once by tests/make_convert_fixtures.py) hold tiny random T5s of both
versions with the logits that transformers' T5ForConditionalGeneration (4.x, and 5.x which ties T5.1.1's lm_head)
and t5x's examples/t5 network gave on one batch.
"""
import json
import os
import shutil

import numpy as np
import orbax.checkpoint as ocp
import pytest

from spactor import checkpoint_io, hf_checkpoint, t5x_checkpoint
from spactor import config as config_lib
from spactor import model as model_lib
from spactor.checkpoint_io import CheckpointError

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'convert')
VERSIONS = ('t5_1_0', 't5_1_1')
BATCH_KEYS = ('encoder_input_tokens', 'decoder_input_tokens', 'decoder_target_tokens')


def logits_of(flat, config, batch):
  module = model_lib.SpacTor(config)
  return np.asarray(module.apply({'params': checkpoint_io.unflatten(flat)},
                                 *(batch[k] for k in BATCH_KEYS), enable_dropout=False))


def assert_parity(flat, config, reference):
  """Logits equal the reference's at every real (non-padding) target position, to float32 precision."""
  ours = logits_of(flat, config, reference)
  real = reference['decoder_target_tokens'] > 0
  np.testing.assert_allclose(ours[real], reference['logits'][real], rtol=2e-5, atol=2e-5)


def assert_same(a: dict, b: dict):
  assert set(a) == set(b)
  for name in a:
    assert a[name].dtype == b[name].dtype == np.float32, name
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def copy_fixture(name, tmp_path):
  return shutil.copytree(os.path.join(FIXTURES, name), str(tmp_path / name))


def t5x_target(version):
  data = np.load(os.path.join(FIXTURES, f't5x_{version}.npz'))
  reference = {k: data[k] for k in BATCH_KEYS + ('logits',)}
  target = {k[len('target/'):]: data[k] for k in data.files if k.startswith('target/')}
  return target, reference


def write_t5x_orbax(model_dir, target, step):
  """A checkpoint as t5x.train's default Orbax manager writes it: checkpoint_<step>/state = {target, state}."""
  state = {'target': checkpoint_io.unflatten(target), 'state': {'step': np.int32(step),
                                                                 'param_states': {'dummy': np.zeros(3, np.float32)}}}
  with ocp.PyTreeCheckpointer() as checkpointer:
    checkpointer.save(os.path.join(str(model_dir), f'checkpoint_{step}', 'state'), state)


# --- parity -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('major', ['hf4', 'hf5'])
@pytest.mark.parametrize('version', VERSIONS)
def test_hf_logits_match_transformers(major, version):
  flat, config = hf_checkpoint.read(os.path.join(FIXTURES, f'{major}_{version}'))
  assert checkpoint_io.version_of(config) == version
  assert (config.relative_attention_num_buckets, config.relative_attention_max_distance) == (8, 16)
  assert (config.num_encoder_layers, config.num_decoder_layers) == (2, 3)
  if (major, version) == ('hf4', 't5_1_1'):  # a real untied head: a tied one would pass the parity by accident
    assert not np.allclose(flat['logits_dense/kernel'], flat['token_embedder/embedding'].T)
  assert_parity(flat, config, dict(np.load(os.path.join(FIXTURES, f'{major}_{version}_logits.npz'))))


@pytest.mark.parametrize('version', VERSIONS)
def test_t5x_logits_match_t5x_network(version, tmp_path):
  """Read from t5x.train's Orbax layout; the legacy msgpack layout is checked against it bit for bit below."""
  target, reference = t5x_target(version)
  write_t5x_orbax(tmp_path, target, step=40)
  flat, config, step = t5x_checkpoint.read(str(tmp_path))
  assert step == 40 and checkpoint_io.version_of(config) == version
  assert_parity(flat, config, reference)


# --- round trips --------------------------------------------------------------------------------------------


@pytest.mark.parametrize('version', VERSIONS)
def test_hf_round_trip_is_bit_exact(version, tmp_path):
  """HF -> converted -> HF (sharded) -> converted: every array and the config come back unchanged."""
  flat, config = hf_checkpoint.read(os.path.join(FIXTURES, f'hf4_{version}'))
  checkpoint_io.write_converted(str(tmp_path / 'a'), flat, config, {'source': 'test'})
  flat_a, config_a = checkpoint_io.read_converted(str(tmp_path / 'a'))
  hf_checkpoint.write(str(tmp_path / 'hf'), flat_a, config_a, max_shard_bytes=8000)
  assert os.path.isfile(tmp_path / 'hf' / hf_checkpoint.INDEX_FILE)
  flat_b, config_b = hf_checkpoint.read(str(tmp_path / 'hf'))
  for got, got_config in ((flat_a, config_a), (flat_b, config_b)):
    assert_same(flat, got)
    assert got_config == config


@pytest.mark.parametrize('version', VERSIONS)
def test_t5x_round_trip_is_bit_exact(version, tmp_path):
  """t5x (Orbax, as t5x.train) -> converted -> t5x (legacy) -> HF -> t5x: unchanged arrays and config."""
  target, _ = t5x_target(version)
  write_t5x_orbax(tmp_path / 'run', target, step=2)
  flat, config, _ = t5x_checkpoint.read(str(tmp_path / 'run'))
  checkpoint_io.write_converted(str(tmp_path / 'a'), flat, config, {'source': 'test'})
  flat_a, config_a = checkpoint_io.read_converted(str(tmp_path / 'a'))
  t5x_checkpoint.write(str(tmp_path / 't5x'), flat_a, config_a, step=3)
  flat_b, config_b, step = t5x_checkpoint.read(str(tmp_path / 't5x'))
  hf_checkpoint.write(str(tmp_path / 'hf'), flat_b, config_b)
  flat_c, config_c = hf_checkpoint.read(str(tmp_path / 'hf'))
  assert step == 3
  assert_same({t5x_checkpoint.to_project_name(k): v for k, v in target.items()}, flat)
  for got, got_config in ((flat_a, config_a), (flat_b, config_b), (flat_c, config_c)):
    assert_same(flat, got)
    assert got_config == config


def test_exported_hf_files_keep_the_original_tensors(tmp_path):
  """The exported T5.1.1 file holds transformers' own tensors and names, with both output keys in its config."""
  source = os.path.join(FIXTURES, 'hf4_t5_1_1')
  flat, config = hf_checkpoint.read(source)
  hf_checkpoint.write(str(tmp_path / 'out'), flat, config)
  from safetensors.numpy import load_file
  original, exported = (load_file(os.path.join(d, 'model.safetensors')) for d in (source, str(tmp_path / 'out')))
  assert set(exported) == set(original) - set(hf_checkpoint.EMBEDDING_COPIES)
  for name, tensor in exported.items():
    np.testing.assert_array_equal(tensor, original[name], err_msg=name)
  written = json.load(open(tmp_path / 'out' / 'config.json'))
  assert (written['tie_word_embeddings'], written['scale_decoder_outputs']) == (False, False)


def test_bfloat16_files_are_read_as_their_float32_values(tmp_path):
  """A bfloat16 checkpoint (numpy has no bfloat16: safetensors' numpy API cannot read it) reads exactly."""
  import ml_dtypes
  from safetensors.numpy import load_file
  d = copy_fixture('hf4_t5_1_1', tmp_path)
  tensors = {k: v.astype(ml_dtypes.bfloat16) for k, v in load_file(os.path.join(d, 'model.safetensors')).items()}
  header, offset = {'__metadata__': {'format': 'pt'}}, 0
  for name, tensor in tensors.items():
    header[name] = {'dtype': 'BF16', 'shape': list(tensor.shape), 'data_offsets': [offset, offset + tensor.nbytes]}
    offset += tensor.nbytes
  header_bytes = json.dumps(header).encode()
  with open(os.path.join(d, 'model.safetensors'), 'wb') as f:
    f.write(len(header_bytes).to_bytes(8, 'little') + header_bytes + b''.join(t.tobytes() for t in tensors.values()))
  flat, _ = hf_checkpoint.read(d)
  np.testing.assert_array_equal(flat['logits_dense/kernel'], tensors['lm_head.weight'].astype(np.float32).T)
  np.testing.assert_array_equal(flat['token_embedder/embedding'], tensors['shared.weight'].astype(np.float32))


def test_transformers5_tied_head_becomes_an_equal_projection():
  flat, config = hf_checkpoint.read(os.path.join(FIXTURES, 'hf5_t5_1_1'))
  assert not config.logits_via_embedding
  np.testing.assert_array_equal(flat['logits_dense/kernel'], flat['token_embedder/embedding'].T)


def test_run_checkpoint_of_stage1_exports_discriminator_and_embedder(tmp_path):
  """A stage-1 TrainState (with generator, RTD head, optimizer slots) gives exactly the plain T5's params."""
  t5, generator, rtd = config_lib.preset('micro', 't5_1_1', vocab_size=128)
  import jax
  tokens = np.ones((1, 4), np.int32)
  shapes = jax.eval_shape(lambda: model_lib.SpacTor(t5, generator, rtd).init(
      jax.random.PRNGKey(0), tokens, tokens, tokens, method=model_lib.SpacTor.init_all)['params'])
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)
  assert {'generator', 'rtd_head'} <= set(params)
  state = {'step': np.int32(5), 'params': params, 'opt_state': {'mu': params}}
  with ocp.PyTreeCheckpointer() as checkpointer:
    checkpointer.save(str(tmp_path / 'checkpoints' / '5' / 'state'), state)
  loaded = checkpoint_io.load_params(str(tmp_path))
  assert (loaded.format, loaded.step, loaded.config) == ('run', 5, t5)
  plain = {k: v for k, v in checkpoint_io.flatten(params).items() if k.split('/')[0] not in ('generator', 'rtd_head')}
  assert_same(checkpoint_io.flatten(loaded.params), {k: np.asarray(v) for k, v in plain.items()})


# --- errors -------------------------------------------------------------------------------------------------


def _edit_safetensors(directory, edit):
  from safetensors.numpy import load_file, save_file
  path = os.path.join(directory, 'model.safetensors')
  tensors = load_file(path)
  edit(tensors)
  save_file(tensors, path, metadata={'format': 'pt'})


def test_missing_tensor_is_named(tmp_path):
  d = copy_fixture('hf4_t5_1_1', tmp_path)
  _edit_safetensors(d, lambda t: t.pop('decoder.block.2.layer.1.EncDecAttention.k.weight'))
  with pytest.raises(CheckpointError, match=r'missing tensor\(s\) decoder\.block\.2\.layer\.1\.EncDecAttention\.k'):
    hf_checkpoint.read(d)


def test_extra_tensor_is_named(tmp_path):
  d = copy_fixture('hf4_t5_1_0', tmp_path)
  _edit_safetensors(d, lambda t: t.update({'decoder.block.0.layer.2.DenseReluDense.wi_1.weight': np.zeros((24, 16),
                                                                                                      np.float32)}))
  with pytest.raises(CheckpointError,
                     match=r'unexpected tensor\(s\) decoder\.block\.0\.layer\.2\.DenseReluDense\.wi_1'):
    hf_checkpoint.read(d)


def test_wrong_shape_is_named(tmp_path):
  d = copy_fixture('hf4_t5_1_1', tmp_path)
  _edit_safetensors(d, lambda t: t.update({'encoder.block.1.layer.1.DenseReluDense.wo.weight': np.zeros((16, 25),
                                                                                                      np.float32)}))
  with pytest.raises(CheckpointError, match=r'encoder\.block\.1\.layer\.1\.DenseReluDense\.wo\.weight has shape '
                                            r'\(16, 25\).*needs \(16, 24\)'):
    hf_checkpoint.read(d)


@pytest.mark.parametrize('damaged, message', [
    ('model.safetensors', r'model\.safetensors is not a readable safetensors file .*copy it again'),
    ('config.json', r'config\.json cannot be read as JSON .*copy it again')])
def test_damaged_file_is_named(tmp_path, damaged, message):
  """A truncated file (an interrupted copy) is one error naming it, not a parser's traceback."""
  d = copy_fixture('hf4_t5_1_1', tmp_path)
  path = os.path.join(d, damaged)
  with open(path, 'rb') as f:
    head = f.read(40)
  with open(path, 'wb') as f:
    f.write(head)
  with pytest.raises(CheckpointError, match=message):
    hf_checkpoint.read(d)


def test_unused_cross_attention_bias_of_old_files_is_skipped_as_transformers_does(tmp_path):
  d = copy_fixture('hf4_t5_1_0', tmp_path)
  _edit_safetensors(d, lambda t: t.update({hf_checkpoint.UNUSED[0]: np.ones((8, 2), np.float32)}))
  flat, _ = hf_checkpoint.read(d)
  assert_same(flat, hf_checkpoint.read(os.path.join(FIXTURES, 'hf4_t5_1_0'))[0])


def test_untied_copy_under_a_tied_config_is_refused(tmp_path):
  d = copy_fixture('hf4_t5_1_0', tmp_path)
  _edit_safetensors(d, lambda t: t.update({'lm_head.weight': t['shared.weight'] + 1}))
  with pytest.raises(CheckpointError, match='lm_head.weight differs from shared.weight'):
    hf_checkpoint.read(d)


def test_missing_tie_word_embeddings_means_tied(tmp_path):
  d = copy_fixture('hf4_t5_1_0', tmp_path)
  path = os.path.join(d, 'config.json')
  hf = json.load(open(path))
  hf.pop('tie_word_embeddings', None)
  json.dump(hf, open(path, 'w'))
  _, config = hf_checkpoint.read(d)
  assert config.logits_via_embedding


def test_t5x_run_of_this_projects_stage1_model_gives_its_t5(tmp_path):
  """t5x.train with gin/t5x runs the project's SpacTor: top-level logits_dense, plus generator and RTD head."""
  target, reference = t5x_target('t5_1_1')
  project = {t5x_checkpoint.to_project_name(k): v for k, v in target.items()}
  stage1 = dict(project, **{'generator/logits_dense/kernel': np.ones((16, 100), np.float32),
                            'rtd_head/output_kernel': np.ones(24, np.float32)})
  write_t5x_orbax(tmp_path, stage1, step=6)
  flat, config, step = t5x_checkpoint.read(str(tmp_path))
  assert step == 6 and checkpoint_io.version_of(config) == 't5_1_1'
  assert_same(project, flat)


def test_t5x_wrong_shape_is_named_with_its_t5x_name(tmp_path):
  target, _ = t5x_target('t5_1_1')
  target['decoder/logits_dense/kernel'] = np.zeros((16, 99), np.float32)
  write_t5x_orbax(tmp_path, target, step=1)
  with pytest.raises(CheckpointError, match=r'decoder/logits_dense/kernel has shape \(16, 99\)'):
    t5x_checkpoint.read(str(tmp_path))


def test_t5x_truncated_msgpack_is_named(tmp_path):
  target, _ = t5x_target('t5_1_1')
  flat = {t5x_checkpoint.to_project_name(k): v for k, v in target.items()}
  config = checkpoint_io.infer_config({k: v.shape for k, v in flat.items()}, 'fixture')
  written = t5x_checkpoint.write(str(tmp_path / 't5x'), flat, config, step=5)
  msgpack = os.path.join(written, t5x_checkpoint.MSGPACK_FILE)
  with open(msgpack, 'r+b') as f:
    f.truncate(100)
  with pytest.raises(CheckpointError, match=r'checkpoint_5/checkpoint cannot be read as a t5x msgpack checkpoint '
                                            r'.*copy it again'):
    t5x_checkpoint.read(str(tmp_path / 't5x'))


def test_t5x_refuses_relative_attention_its_network_lacks(tmp_path):
  flat, config = hf_checkpoint.read(os.path.join(FIXTURES, 'hf4_t5_1_1'))  # 8 buckets up to 16
  with pytest.raises(CheckpointError, match='relative_attention_num_buckets is 8.*fixes it to 32'):
    t5x_checkpoint.write(str(tmp_path / 'out'), flat, config)
  assert not os.path.exists(tmp_path / 'out')


def test_preset_mismatch_names_the_fields():
  _, config = hf_checkpoint.read(os.path.join(FIXTURES, 'hf4_t5_1_1'))
  checkpoint_io.check_same_architecture(config, config, 'x', 'itself')
  with pytest.raises(CheckpointError, match=r'not the preset micro/t5_1_0: .*emb_dim: checkpoint 16, the preset '
                                            r'micro/t5_1_0 64.*mlp_activations'):
    checkpoint_io.check_preset(config, 'micro', 't5_1_0', 'x')


def test_outputs_never_overwrite(tmp_path):
  flat, config = hf_checkpoint.read(os.path.join(FIXTURES, 'hf4_t5_1_0'))
  (tmp_path / 'taken').mkdir()
  (tmp_path / 'taken' / 'keep.txt').write_text('mine')
  for write in (lambda p: hf_checkpoint.write(p, flat, config), lambda p: t5x_checkpoint.write(p, flat, config),
                lambda p: checkpoint_io.write_converted(p, flat, config, {})):
    with pytest.raises(CheckpointError, match='already exists'):
      write(str(tmp_path / 'taken'))
  assert os.listdir(tmp_path / 'taken') == ['keep.txt']


def test_unknown_directory_says_what_is_expected(tmp_path):
  with pytest.raises(CheckpointError, match='Hugging Face.*t5x'):
    checkpoint_io.load_params(str(tmp_path))
