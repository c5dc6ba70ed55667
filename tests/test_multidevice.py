"""The same run on a 4-device (2 data x 2 model) mesh gives the losses of the one-device run."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from spactor import metrics_io, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = dict(total_steps=4, tau=2, batch_size=4, inputs_length=32, log_every=1, eval_every=100,
                eval_batches=1, checkpoint_every=4, warmup_steps=10, plot=False)


def train_losses(model_dir):
  return [r['train/loss'] for r in metrics_io.read_records(os.path.join(model_dir, 'metrics.jsonl'))
          if 'train/loss' in r]


def test_sharded_run_matches_single_device_run(tmp_path):
  train.run(train.TrainConfig(model_dir=str(tmp_path / 'one'), **SETTINGS))
  sharded_dir = tmp_path / 'four'
  script = ('import jax; assert jax.device_count() == 4, jax.devices(); from spactor import train; '
            f'train.run(train.TrainConfig(model_dir={str(sharded_dir)!r}, num_partitions=2, **{SETTINGS!r}))')
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=4', 'JAX_PLATFORMS': 'cpu'}
  done = subprocess.run([sys.executable, '-c', script], cwd=REPO, env=env, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]
  assert train_losses(sharded_dir) == pytest.approx(train_losses(tmp_path / 'one'), rel=2e-4)
  assert os.listdir(sharded_dir / 'checkpoints') == ['4']  # written once, not once per device


def _free_port() -> int:
  import socket
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process_reading_the_same_shards(tmp_path):
  """jax.distributed with two CPU processes: each reads its data shard, the global batch is the same."""
  settings = {**SETTINGS, 'data_shards': 2}
  train.run(train.TrainConfig(model_dir=str(tmp_path / 'one'), **settings))
  two = tmp_path / 'two'
  port = _free_port()
  procs = []
  for index in range(2):
    script = ('import jax; '
              f'jax.distributed.initialize("localhost:{port}", num_processes=2, process_id={index}); '
              'from spactor import train; '
              f'train.run(train.TrainConfig(model_dir={str(two)!r}, **{settings!r}))')
    env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'JAX_CPU_COLLECTIVES_IMPLEMENTATION': 'gloo'}
    procs.append(subprocess.Popen([sys.executable, '-c', script], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  for proc in procs:
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]
  assert train_losses(two) == pytest.approx(train_losses(tmp_path / 'one'), rel=1e-5)
  assert sorted(os.listdir(two / 'checkpoints')) == ['4']
  assert sorted(f for f in os.listdir(two / 'checkpoints' / '4' / 'data') if f.startswith('process_')) == [
      'process_0-of-2.data-00000-of-00001', 'process_0-of-2.index',
      'process_1-of-2.data-00000-of-00001', 'process_1-of-2.index']


def sharded_eval_results(num_partitions: int, sharded: bool, beam_size: int = 1) -> dict:
  """Predictions and scores of a random tiny T5 on 10 examples in eval batches of 4 (the last one padded), each
  batch split over the data-parallel devices (sharded) or handed to jit whole (not)."""
  import jax
  import jax.numpy as jnp
  import tensorflow as tf
  from spactor import config as config_lib, finetune_eval, model as model_lib, partitioning

  module = model_lib.SpacTor(config_lib.T5Config(vocab_size=64, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                                                 num_encoder_layers=1, num_decoder_layers=1))
  rng = np.random.default_rng(0)
  n, targets_length = 10, 5
  inputs = rng.integers(2, 64, (n, 12)) * (np.arange(12)[None] < rng.integers(3, 13, (n, 1)))
  targets = rng.integers(2, 64, (n, targets_length))
  features = {'encoder_input_tokens': inputs.astype(np.int32), 'decoder_target_tokens': targets.astype(np.int32),
              'decoder_input_tokens': np.pad(targets[:, :-1], ((0, 0), (1, 0))).astype(np.int32),
              'decoder_loss_weights': np.ones_like(targets, np.int32)}
  dataset = tf.data.Dataset.from_tensor_slices((np.arange(n), features))
  mesh = partitioning.make_mesh(num_partitions)
  tokens = jnp.ones((1, 8), jnp.int32)
  variables, _ = partitioning.sharded_init(lambda r: module.init(r, tokens, tokens, tokens), mesh,
                                           jax.random.PRNGKey(0))
  params = jax.tree.map(lambda x: 2 * x, variables['params'])  # sharper: the rows decode to different tokens
  sharding = partitioning.batch_sharding(mesh) if sharded else None
  with partitioning.logical_context(mesh):
    predictions = finetune_eval.make_predict_fn(module, lambda: params, 4, targets_length, beam_size=beam_size,
                                                sharding=sharding)(dataset)
    scores = finetune_eval.make_score_fn(module, lambda: params, 4, sharding=sharding)(dataset)
  rows_per_device = sorted({shard.data.shape[0] for shard in
                            finetune_eval._to_devices(inputs[:4], sharding).addressable_shards}) if sharded else []
  return {'predictions': [[i, p] for i, p in sorted(predictions)], 'scores': [[i, s] for i, s in sorted(scores)],
          'rows_per_device': rows_per_device}


def _start_child(script: str, env: dict) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, '-c', script], cwd=REPO, env={**os.environ, 'JAX_PLATFORMS': 'cpu', **env},
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _assert_same_eval(results: dict, reference: dict) -> None:
  assert [i for i, _ in results['predictions']] == list(range(10))  # every row back, padding dropped
  assert len({tuple(p) for _, p in reference['predictions']}) >= 4  # rows that differ: a mix-up would show
  assert results['predictions'] == reference['predictions']
  assert [i for i, _ in results['scores']] == [i for i, _ in reference['scores']]
  np.testing.assert_allclose([s for _, s in results['scores']], [s for _, s in reference['scores']], rtol=1e-5)


def test_evaluation_splits_its_batches_over_data_parallel_devices():
  """Fine-tuning's predict and score functions on a 2 (data) x 2 (model) mesh: each device decodes 2 of a batch's
  4 rows and every row comes back; greedy and beam predictions and scores equal one device's."""
  script = ('import json; from tests.test_multidevice import sharded_eval_results; '
            'print("RESULT " + json.dumps([sharded_eval_results(2, sharded=True, beam_size=b) for b in (1, 2)]))')
  output, errors = _start_child(script, {'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}).communicate(
      timeout=600)
  lines = [line for line in output.splitlines() if line.startswith('RESULT ')]
  assert lines, errors[-3000:]
  for beam_size, results in zip((1, 2), json.loads(lines[0][len('RESULT '):])):
    assert results['rows_per_device'] == [2]
    _assert_same_eval(results, sharded_eval_results(1, sharded=False, beam_size=beam_size))


def test_two_processes_evaluate_their_shares_and_both_get_every_row():
  """jax.distributed with two CPU processes: each holds half of every eval batch; both get all predictions."""
  reference = sharded_eval_results(1, sharded=False)
  port = _free_port()
  procs = [_start_child(
      'import json, jax; '
      f'jax.distributed.initialize("localhost:{port}", num_processes=2, process_id={index}); '
      'from tests.test_multidevice import sharded_eval_results; '
      'print("RESULT " + json.dumps(sharded_eval_results(1, sharded=True)))',
      {'JAX_CPU_COLLECTIVES_IMPLEMENTATION': 'gloo'}) for index in range(2)]
  for proc in procs:
    output, errors = proc.communicate(timeout=600)
    lines = [line for line in output.splitlines() if line.startswith('RESULT ')]
    assert proc.returncode == 0 and lines, errors[-3000:]
    results = json.loads(lines[0][len('RESULT '):])
    assert results['rows_per_device'] == [2]  # this process's one device holds 2 of the 4 rows
    _assert_same_eval(results, reference)
