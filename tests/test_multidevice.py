"""The same run on a 4-device (2 data x 2 model) mesh gives the losses of the one-device run."""
import os
import subprocess
import sys

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
