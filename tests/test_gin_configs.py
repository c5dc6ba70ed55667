"""Every gin file of the project's own trainer parses and builds its model, and its knobs reach their targets."""
import glob
import os

import gin
import jax
import jax.numpy as jnp
import pytest

from spactor import cli, config as config_lib, model as model_lib, preprocessors, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINER_GIN = sorted(os.path.relpath(p, REPO) for pattern in ('gin/models/*.gin', 'gin/objectives/*.gin',
                                                              'gin/runs/*.gin')
                     for p in glob.glob(os.path.join(REPO, pattern)))


@pytest.fixture
def parse(monkeypatch):
  monkeypatch.chdir(REPO)

  def _parse(files, bindings=()):
    cli.parse_gin(files, list(bindings), [])
  yield _parse
  gin.clear_config()


def test_the_trainer_gin_files_are_all_found():
  assert {'gin/runs/demo.gin', 'gin/runs/pretrain.gin', 'gin/runs/cpu.gin', 'gin/objectives/spactor.gin',
          'gin/objectives/sc.gin', 'gin/models/t5_1_0_base.gin'} <= set(TRAINER_GIN)


@pytest.mark.parametrize('path', TRAINER_GIN)
def test_every_gin_file_parses_and_builds_its_model(parse, path):
  # Model, objective and override files are layers: stack them on the run file as a user does.
  files = [path] if path in ('gin/runs/pretrain.gin', 'gin/runs/demo.gin') else ['gin/runs/pretrain.gin', path]
  parse(files, ['MODEL_DIR = "/tmp/unused"'])
  config = train.TrainConfig()
  t5, generator, rtd_head = config_lib.preset(vocab_size=256)
  module = model_lib.SpacTor(t5, generator, rtd_head)
  tokens = jnp.ones((1, 8), jnp.int32)
  shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), tokens, tokens, tokens,
                                              method=model_lib.SpacTor.init_all))
  assert {'token_embedder', 'encoder', 'decoder', 'generator', 'rtd_head'} <= set(shapes['params'])
  assert config.total_steps > 0 and (config.tau is None or config.tau <= config.total_steps)


def test_run_files_select_the_paper_and_cpu_settings(parse):
  parse(['gin/runs/pretrain.gin'], ['MODEL_DIR = "/tmp/unused"'])
  config = train.TrainConfig()
  t5 = config_lib.preset(vocab_size=32128).t5
  assert (config.batch_size, config.inputs_length, config.tau, config.corpus) == (2048, 512, 120000, 'c4')
  assert (t5.emb_dim, t5.num_encoder_layers, t5.mlp_dim) == (768, 12, 3072)
  assert preprocessors.targets_length_for(config.inputs_length) == 114
  gin.clear_config()
  parse(['gin/runs/demo.gin'])
  config = train.TrainConfig()
  assert config.corpus == 'sotu' and config_lib.preset().t5.emb_dim == 128


def test_command_line_knobs_reach_the_preprocessors_and_the_loss(parse):
  parse(['gin/runs/demo.gin'], ['MLM_RATIO = 0.25', 'LAMBDA1 = 50.0', 'TAU = 7', 'NOISE_DENSITY = 0.3'])
  config = train.TrainConfig()
  assert (config.lambda1, config.tau) == (50.0, 7)
  assert gin.get_bindings(preprocessors.mlm_mask)['mlm_ratio'] == 0.25
  assert config.max_mlm_positions == 33 and config.mlm_ratio == 0.25 and config.noise_density == 0.3
  assert preprocessors.targets_length_for(128) == preprocessors.random_spans_helper(128, 0.3, 3.0)[1]


def test_sc_objective_file_is_tau_zero(parse):
  parse(['gin/runs/pretrain.gin', 'gin/objectives/sc.gin'], ['MODEL_DIR = "/tmp/unused"'])
  assert train.TrainConfig().tau == 0
