"""The paper's settings in both paths (our trainer's gin, t5x's models and gin), and the t5x stage-2 restore as far
as it runs without t5x (issue 11)."""
import os

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from spactor import checkpointing, objectives, preprocessors, stages
from spactor import t5x_models, train
from tests.test_t5x_compat import _built, batch, init, make, parse, vocabulary  # noqa: F401 (fixtures)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Table 5 and Section 3.2.4: MLM ratio, generator (layers, MLP size) and τ of each paper size.
PAPER = {'base': (0.15, (4, 1024), 120_000), 'large': (0.2, (6, 2048), 120_000)}


@pytest.fixture
def parse_trainer(monkeypatch):
  monkeypatch.chdir(REPO)

  def _parse(files, bindings=()):
    gin.clear_config()
    train.cli.parse_gin(files, list(bindings), [])
    return train.TrainConfig()
  yield _parse
  gin.clear_config()


@pytest.mark.parametrize('version', ['t5_1_0', 't5_1_1'])
@pytest.mark.parametrize('size', sorted(PAPER))
@pytest.mark.parametrize('order', ['size_last', 'size_first'])
def test_a_paper_size_brings_its_own_settings_in_either_order(parse_trainer, version, size, order):
  """As pretrain.gin tells users (the size's file after it), or a run file that includes the size first."""
  model_file = f'gin/models/{version}_{size}.gin'
  files = (['gin/runs/pretrain.gin', model_file] if order == 'size_last'
           else [model_file, 'gin/objectives/spactor.gin'])
  config = parse_trainer(files, ['MODEL_DIR = "/tmp/unused"'] if order == 'size_last' else [
      'spactor.train.TrainConfig.model_dir = "/tmp/unused"', 'spactor.train.TrainConfig.total_steps = 1000000'])
  mlm_ratio, generator, tau = PAPER[size]
  assert config.mlm_ratio == mlm_ratio
  assert gin.get_bindings(preprocessors.mlm_mask)['mlm_ratio'] == mlm_ratio
  assert (config.model.generator.num_layers, config.model.generator.mlp_dim) == generator
  assert config.tau == tau


def test_the_trainer_gin_defaults_are_the_papers_and_the_old_behaviour_is_a_knob(parse_trainer):
  config = parse_trainer(['gin/runs/demo.gin'])  # demo.gin sets MODEL_DIR
  assert config.loss_normalization == 'example_sum' and config.sc_weight_after_tau == config.lambda2 == 10.0
  assert parse_trainer(['gin/runs/demo.gin'], ['LAMBDA2 = 4.0']).sc_weight_after_tau == 4.0
  config = parse_trainer(['gin/runs/demo.gin'], ['STAGE2_SC_WEIGHT = 1.0', "LOSS_NORMALIZATION = 'token_mean'"])
  assert (config.sc_weight_after_tau, config.loss_normalization) == (1.0, 'token_mean')
  # The SC baseline (TAU = 0) trains on the weight of SpacTor's stage 2, as t5x's sc_baseline.gin does.
  config = parse_trainer(['gin/runs/demo.gin'], ['TAU = 0', 'LAMBDA2 = 4.0'])
  assert (config.tau, config.sc_weight_after_tau) == (0, 4.0)


# ---- t5x ------------------------------------------------------------------------------------------------------


def test_t5x_models_sum_over_positions_per_example_by_default(vocabulary, batch):  # noqa: F811
  rows = batch['encoder_input_tokens'].shape[0]
  sc = make(t5x_models.SCModel, vocabulary, z_loss=0.0)
  params = jax.jit(lambda: init(sc, batch)['params'])()
  loss, metrics = jax.jit(sc.loss_fn)(params, batch, None)
  # The metric is the mean over target tokens (sums over counts); the loss sums per example.
  tokens = float(np.sum(batch['decoder_loss_weights']))
  np.testing.assert_allclose(loss, float(metrics['sc_loss'].compute()) * tokens / rows, rtol=1e-5)

  hybrid = make(t5x_models.SpacTorModel, vocabulary, z_loss=0.0, lambda1=3.0, lambda2=5.0)
  params = jax.jit(lambda: init(hybrid, batch)['params'])()
  loss, _ = jax.jit(hybrid.loss_fn)(params, batch, None)
  allowed = objectives.allowed_generator_ids(hybrid.module.config.vocab_size,
                                             vocabulary.vocab_size - vocabulary.extra_ids)
  _, raw = jax.jit(lambda p, b: stages.hybrid_loss(hybrid.module, p, b, jax.random.PRNGKey(0), False,
                                                   weights=hybrid.weights, allowed_ids=allowed, z_loss=0.0))(
                                                       params, batch)
  expected = (raw['gen_loss_sum'] + 3.0 * raw['rtd_loss_sum'] + 5.0 * raw['sc_loss_sum']) / rows
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_stage_2_gin_keeps_the_sc_scale_of_stage_1(parse):  # noqa: F811
  """spactor_stage2.gin trains on λ2·L_SC (STAGE2_SC_WEIGHT = LAMBDA2); 1.0 is the old behaviour; the SC
  baseline trains on the same λ2·L_SC (as the project's trainer's TAU = 0 does)."""
  command = ['OPTIMIZER = None', 'VOCABULARY = @_tiny_vocabulary()', '_built.model = %MODEL', 'MODEL_DIR = "/tmp/s2"',
             'TRAIN_STEPS = 100', 'TAU = 50', 'STAGE1_CHECKPOINT = "/tmp/s1/checkpoint_50"']
  stage2 = ['gin/t5x/models/t5_1_0_base.gin', 'gin/t5x/runs/spactor_stage2.gin']
  parse(stage2, command)
  assert _built()._sc_weight == 10.0  # pylint: disable=protected-access
  parse(stage2, command + ['LAMBDA2 = 4.0'])
  assert _built()._sc_weight == 4.0  # pylint: disable=protected-access
  parse(stage2, command + ['STAGE2_SC_WEIGHT = 1.0'])
  assert _built()._sc_weight == 1.0  # pylint: disable=protected-access
  baseline = ['gin/t5x/models/t5_1_0_base.gin', 'gin/t5x/runs/sc_baseline.gin']
  parse(baseline, command[:4])
  assert _built()._sc_weight == 10.0 and _built()._normalization == 'example_sum'  # pylint: disable=protected-access
  parse(baseline, command[:4] + ['LAMBDA2 = 4.0'])
  assert _built()._sc_weight == 4.0  # pylint: disable=protected-access


def _flat(tree):
  return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_stage_2_restore_finds_every_slot_it_needs_in_the_stage_1_state(vocabulary, batch):  # noqa: F811
  """t5x's 'specific' restore (spactor_stage2.gin) reads, by name, what the new train state holds. Without t5x:
  the stage-2 model's parameters are stage 1's without the generator and the RTD head, with the same shapes and
  logical axes (so the same factored slots), and taking each stage-2 slot of an optimizer state by its path out of
  a stage-1 state gives the state our own trainer carries across τ (step counters included)."""
  stage1 = jax.eval_shape(lambda: init(make(t5x_models.SpacTorModel, vocabulary, 'tiny'), batch))
  stage2 = jax.eval_shape(lambda: init(make(t5x_models.SCModel, vocabulary, 'tiny'), batch))
  kept = _flat(stages.drop_stage_1_params(stage1['params']))
  assert _flat(stage2['params']).keys() == kept.keys()
  assert all(stage2_leaf.shape == kept[k].shape for k, stage2_leaf in _flat(stage2['params']).items())
  axes1 = _flat(jax.tree.map(lambda a: a.names, stage1['params_axes'], is_leaf=lambda x: hasattr(x, 'names')))
  axes2 = _flat(jax.tree.map(lambda a: a.names, stage2['params_axes'], is_leaf=lambda x: hasattr(x, 'names')))
  assert axes2.items() <= axes1.items()

  # Optimizer slots after one update (t5x's Adafactor factors by the same shapes): restore-by-path == carried.
  params = jax.tree.map(lambda leaf: jnp.ones(leaf.shape, leaf.dtype), stage1['params'])
  tx = optax.adafactor(1e-2, decay_rate=0.8, multiply_by_parameter_scale=True, momentum=None)
  opt_state = jax.jit(lambda p: tx.update(jax.tree.map(lambda x: 0.5 * x, p), tx.init(p), p)[1])(params)
  new_params = stages.drop_stage_1_params(params)
  old_slots, fresh = _flat(opt_state), _flat(tx.init(new_params))
  restored = {k: old_slots[k] for k in fresh}  # raises KeyError on a slot stage 1 does not have
  carried = _flat(checkpointing.carry_optimizer_state(opt_state, new_params, tx))
  assert restored.keys() == carried.keys()
  for k in restored:
    np.testing.assert_array_equal(restored[k], carried[k])
  assert not any('generator' in k or 'rtd_head' in k for k in restored)
  assert any(k.endswith('.count') or 'count' in k for k in restored)
