"""The real trainer, shrunk: a few steps across the τ switch, then a restart that continues the step count."""
import os

import numpy as np
import orbax.checkpoint as ocp
import pytest

from spactor import metrics_io, train


def tiny_config(model_dir, **overrides) -> train.TrainConfig:
  base = dict(model_dir=str(model_dir), total_steps=6, tau=3, batch_size=4, inputs_length=32, corpus='sotu',
              learning_rate=1.0, warmup_steps=10, log_every=1, eval_every=3, eval_batches=1, checkpoint_every=2,
              keep_checkpoints=5, plot=False)
  return train.TrainConfig(**{**base, **overrides})


def records(model_dir, prefix='train/'):
  return [r for r in metrics_io.read_records(os.path.join(model_dir, 'metrics.jsonl'))
          if any(k.startswith(prefix) for k in r)]


def checkpoint_param_keys(model_dir, step):
  path = os.path.join(model_dir, 'checkpoints', str(step), 'state')
  meta = ocp.StandardCheckpointer().metadata(path)
  tree = getattr(meta, 'item_metadata', meta)
  tree = getattr(tree, 'tree', tree)
  return set(tree['params'])


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp('uninterrupted')
  summary = train.run(tiny_config(model_dir, plot=True))
  return model_dir, summary


def test_run_crosses_tau_and_reports_both_stages(uninterrupted):
  model_dir, summary = uninterrupted
  train_records = records(model_dir)
  assert [r['step'] for r in train_records] == [1, 2, 3, 4, 5, 6]
  assert [r['stage'] for r in train_records] == ['hybrid'] * 3 + ['sc'] * 3
  assert all('train/rtd_loss' in r for r in train_records[:3])
  assert not any('train/rtd_loss' in r for r in train_records[3:])
  assert all(np.isfinite(r['train/loss']) for r in train_records)
  # The stage-1 step costs more FLOPs than the SC step, and the cumulative count follows the stages.
  hybrid, sc = summary['stages']
  assert hybrid['gflops_per_step'] > sc['gflops_per_step']
  assert train_records[-1]['cumulative_flops'] == pytest.approx(
      1e9 * (3 * hybrid['gflops_per_step'] + 3 * sc['gflops_per_step']))
  assert os.path.exists(os.path.join(model_dir, 'validation_loss.png'))
  assert os.path.exists(os.path.join(model_dir, 'summary.json'))


def test_validation_reports_clean_and_noisy_sc_loss_in_stage_one_only(uninterrupted):
  model_dir, _ = uninterrupted
  evals = {r['step']: r for r in records(model_dir, 'eval/')}
  assert sorted(evals) == [0, 3, 6]
  for step in (0, 3):
    assert {'eval/sc_clean_loss', 'eval/sc_loss', 'eval/gen_accuracy', 'eval/replaced', 'eval/rtd_accuracy'} <= set(evals[step])
  assert 'eval/sc_clean_loss' in evals[6] and 'eval/sc_loss' not in evals[6]


def test_checkpoints_drop_generator_and_rtd_head_after_tau(uninterrupted):
  model_dir, _ = uninterrupted
  assert {'generator', 'rtd_head'} <= checkpoint_param_keys(model_dir, 2)
  assert checkpoint_param_keys(model_dir, 6).isdisjoint({'generator', 'rtd_head'})


def test_restart_continues_the_step_count_and_matches_an_uninterrupted_run(uninterrupted, tmp_path):
  model_dir, _ = uninterrupted
  train.run(tiny_config(tmp_path, total_steps=4))  # stops after the switch, with a checkpoint at 4
  train.run(tiny_config(tmp_path))  # the same command with the full length goes on from step 4
  resumed = records(tmp_path)
  assert [r['step'] for r in resumed] == [1, 2, 3, 4, 5, 6]
  for a, b in zip(records(model_dir), resumed):
    assert a['train/loss'] == pytest.approx(b['train/loss'], rel=1e-6), a['step']


def test_tau_zero_is_the_sc_baseline_from_the_first_step(tmp_path):
  train.run(tiny_config(tmp_path, total_steps=2, tau=0, eval_every=2))
  assert {r['stage'] for r in records(tmp_path)} == {'sc'}
  assert checkpoint_param_keys(tmp_path, 2).isdisjoint({'generator', 'rtd_head'})


@pytest.mark.parametrize('overrides, message', [
    (dict(tau=10), 'larger than the run'),
    (dict(tau=-1), 'non-negative'),
    (dict(lambda1=-1.0), 'lambda1'),
    (dict(batch_size=0), 'batch_size'),
])
def test_bad_settings_are_rejected_by_name(tmp_path, overrides, message):
  with pytest.raises(ValueError, match=message):
    tiny_config(tmp_path, **overrides)


def test_tau_none_keeps_the_hybrid_objective_throughout(tmp_path):
  config = tiny_config(tmp_path, tau=None)
  assert config.hybrid_steps == config.total_steps
  assert {config.stage_at(s) for s in range(config.total_steps)} == {'hybrid'}
