"""Entry points take converted and public checkpoints: spactor.train's init_checkpoint, ssr's loader (ssr.generate's
generator, ssr.continual's student), the CLI, and the vocabulary error when the public T5 vocabulary is missing."""
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
import tensorflow as tf

from spactor import checkpoint_io, checkpointing, convert, hf_checkpoint
from spactor import config as config_lib
from spactor import model as model_lib
from spactor import train
from spactor import vocab as vocab_lib
from ssr import params as params_lib

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'convert')
HF_T5_1_1 = os.path.join(FIXTURES, 'hf4_t5_1_1')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_params(shapes_tree, seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes_tree)


@pytest.mark.parametrize('converted', [False, True])
def test_ssr_loader_reads_public_and_converted_checkpoints(converted, tmp_path):
  flat, config = hf_checkpoint.read(HF_T5_1_1)
  path = HF_T5_1_1
  if converted:
    path = str(tmp_path / 'converted')
    convert.main(['to-spactor', HF_T5_1_1, path])
  params, step = params_lib.restore_t5_params(path, model_lib.SpacTor(config))
  assert step is None
  for name, array in checkpoint_io.flatten(params).items():
    np.testing.assert_array_equal(array, flat[name], err_msg=name)
  other = config_lib.T5Config(**{**config.__dict__, 'mlp_dim': 32})
  with pytest.raises(checkpoint_io.CheckpointError, match='mlp_dim: checkpoint 24, the configured model 32'):
    params_lib.restore_t5_params(path, model_lib.SpacTor(other))


def test_train_init_checkpoint_replaces_discriminator_and_embedder_only(tmp_path):
  """A stage-1 state gets D and the embedder from the checkpoint; generator and RTD head keep their init."""
  flat, t5 = hf_checkpoint.read(HF_T5_1_1)
  generator, rtd = config_lib.generator_preset('micro'), config_lib.rtd_head_preset('micro', 't5_1_1')
  tokens = np.ones((1, 4), np.int32)
  shapes = jax.eval_shape(lambda: model_lib.SpacTor(t5, generator, rtd).init(
      jax.random.PRNGKey(0), tokens, tokens, tokens, method=model_lib.SpacTor.init_all)['params'])
  params = jax.tree.map(jax.numpy.asarray, random_params(shapes, 0))
  tx = optax.adam(1e-3)
  state = checkpointing.TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                                   opt_state=tx.init(params))
  config = train.TrainConfig(model_dir=str(tmp_path / 'run'), total_steps=1, tau=None, init_checkpoint=HF_T5_1_1)
  new = train.init_from_checkpoint(state, config, t5, tx)
  got = checkpoint_io.flatten(jax.device_get(new.params))
  before = checkpoint_io.flatten(jax.device_get(params))
  assert set(got) == set(before)
  for name, array in got.items():
    np.testing.assert_array_equal(array, before[name] if name.split('/')[0] in ('generator', 'rtd_head')
                                  else flat[name], err_msg=name)
  assert int(new.step) == 0
  wrong = train.TrainConfig(model_dir=str(tmp_path / 'run'), total_steps=1, tau=None,
                            init_checkpoint=str(tmp_path / 'missing'))
  with pytest.raises(checkpoint_io.CheckpointError, match='does not exist'):
    train.init_from_checkpoint(state, wrong, t5, tx)


def test_missing_public_vocabulary_says_it_cannot_be_downloaded(monkeypatch):
  def unreachable(path):
    raise tf.errors.FailedPreconditionError(None, None, 'Could not resolve host')
  monkeypatch.setattr(vocab_lib.tf.io.gfile, 'exists', unreachable)
  with pytest.raises(FileNotFoundError, match=r'cannot be downloaded here.*--vocab_file=PATH.*c4_vocab_file\.path'):
    vocab_lib.load(vocab_lib.PUBLIC_T5_VOCAB)


def test_cli_help_and_errors(tmp_path):
  run = lambda *args: subprocess.run([sys.executable, '-m', 'spactor.convert', *args], cwd=ROOT, capture_output=True,
                                     text=True, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  help_text = convert.build_parser().format_help()
  for name in convert.SUBCOMMANDS:
    assert name in help_text
  bad = run('to-hf', str(tmp_path), str(tmp_path / 'out'))
  assert bad.returncode == 1 and bad.stderr.startswith('error: ') and 'Traceback' not in bad.stderr
  assert not os.path.exists(tmp_path / 'out')


def test_parse_size():
  assert convert.parse_size('2GB') == 2 * 10 ** 9
  assert convert.parse_size('10MiB') == 10 * 2 ** 20
  assert convert.parse_size('1234') == 1234
