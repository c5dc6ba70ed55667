"""A killed run loses at most the steps since its last checkpoint and then continues exactly.

Subprocess tests run the real command line (`python -m spactor.train`), kill it with SIGKILL or SIGTERM while it
trains, restart the same command, and compare every step's loss with an uninterrupted in-process run.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import gin
import pytest

from spactor import checkpointing, metrics_io, train
from spactor import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL, TAU = 16, 6
SETTINGS = dict(total_steps=TOTAL, tau=TAU, batch_size=4, inputs_length=32, log_every=1, eval_every=100,
                eval_batches=1, checkpoint_every=3, keep_checkpoints=3, warmup_steps=10, learning_rate=0.25,
                generator_lr_scale=1.25, plot=False)  # the demo's generator step: its optimizer chain resumes too


def command(model_dir) -> list[str]:
  bindings = {'MODEL_DIR': repr(str(model_dir)), 'TOTAL_STEPS': TOTAL, 'TAU': TAU, 'BATCH_SIZE': 4,
              'INPUTS_LENGTH': 32, 'spactor.train.TrainConfig.log_every': 1,
              'spactor.train.TrainConfig.eval_every': 100, 'spactor.train.TrainConfig.eval_batches': 1,
              'spactor.train.TrainConfig.checkpoint_every': 3, 'spactor.train.TrainConfig.warmup_steps': 10,
              'spactor.train.TrainConfig.learning_rate': SETTINGS['learning_rate'],
              'spactor.train.TrainConfig.generator_lr_scale': SETTINGS['generator_lr_scale'],
              'spactor.train.TrainConfig.plot': False}
  return [sys.executable, '-m', 'spactor.train', '--gin_file=gin/runs/demo.gin',
          *[f'--gin.{k}={v}' for k, v in bindings.items()]]


def losses(model_dir) -> dict[int, float]:
  path = os.path.join(model_dir, 'metrics.jsonl')
  return {r['step']: r['train/loss'] for r in metrics_io.read_records(path) if 'train/loss' in r}


def start(model_dir) -> subprocess.Popen:
  return subprocess.Popen(command(model_dir), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_step(proc: subprocess.Popen, model_dir, step: int, timeout: float = 300) -> None:
  deadline = time.time() + timeout
  while time.time() < deadline:
    if os.path.exists(os.path.join(model_dir, 'metrics.jsonl')) and max(losses(model_dir), default=0) >= step:
      return
    if proc.poll() is not None:
      raise AssertionError(f'the run ended before step {step}:\n{proc.stdout.read()}')
    time.sleep(0.05)
  proc.kill()
  raise AssertionError(f'step {step} not reached in {timeout}s')


@pytest.fixture(scope='module')
def reference_dir(tmp_path_factory):
  """The MODEL_DIR of an uninterrupted run (tests copy it before they change anything in it)."""
  model_dir = tmp_path_factory.mktemp('reference')
  train.run(train.TrainConfig(model_dir=str(model_dir), **SETTINGS))
  return model_dir


@pytest.fixture(scope='module')
def reference(reference_dir):
  return losses(reference_dir)


def assert_same_run(reference, model_dir):
  resumed = losses(model_dir)
  assert sorted(resumed) == list(range(1, TOTAL + 1))
  for step, loss in reference.items():
    assert resumed[step] == pytest.approx(loss, rel=1e-6, abs=1e-6), step


def test_sigkill_in_hybrid_stage_and_after_the_switch_then_restart_matches_uninterrupted(reference, tmp_path):
  proc = start(tmp_path)
  wait_for_step(proc, tmp_path, 4)  # hybrid stage, after the checkpoint at 3
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  proc = start(tmp_path)
  wait_for_step(proc, tmp_path, TAU + 2)  # past the switch at τ
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  done = subprocess.run(command(tmp_path), cwd=REPO, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]
  assert_same_run(reference, tmp_path)


def test_sigterm_finishes_the_step_saves_and_exits_cleanly(reference, tmp_path):
  proc = start(tmp_path)
  wait_for_step(proc, tmp_path, 4)
  proc.send_signal(signal.SIGTERM)
  output, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, output[-3000:]
  assert 'SIGTERM' in output
  stopped_at = max(losses(tmp_path))
  assert stopped_at < TOTAL
  assert str(stopped_at) in os.listdir(os.path.join(tmp_path, 'checkpoints'))
  done = subprocess.run(command(tmp_path), cwd=REPO, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]
  assert_same_run(reference, tmp_path)


def test_damaged_latest_checkpoint_is_reported_and_the_previous_one_used(reference, tmp_path, caplog):
  train.run(train.TrainConfig(model_dir=str(tmp_path), **{**SETTINGS, 'total_steps': 9}))
  state_dir = os.path.join(tmp_path, 'checkpoints', '9', 'state')
  for root, _, files in os.walk(state_dir):  # damage every array file of the latest step
    for name in files:
      with open(os.path.join(root, name), 'wb') as f:
        f.write(b'garbage')
  os.makedirs(os.path.join(tmp_path, 'checkpoints', '12.orbax-checkpoint-tmp-1'))  # an interrupted write
  with caplog.at_level('ERROR'):
    train.run(train.TrainConfig(model_dir=str(tmp_path), **SETTINGS))
  assert any('step 9' in r.getMessage() and 'cannot be read' in r.getMessage() for r in caplog.records)
  assert_same_run(reference, tmp_path)


def strict_json(path):
  def refuse(constant):
    raise ValueError(f'{path} holds {constant}, which is not JSON')
  with open(path) as f:
    return json.load(f, parse_constant=refuse)


def strict_json_line(line):
  def refuse(constant):
    raise ValueError(f'{line} holds {constant}, which is not JSON')
  return json.loads(line, parse_constant=refuse)


def test_a_restart_before_the_first_checkpoint_writes_each_record_once(reference_dir, tmp_path):
  first_records = metrics_io.read_records(os.path.join(reference_dir, metrics_io.METRICS_FILE))[:3]
  with open(tmp_path / metrics_io.METRICS_FILE, 'w') as f:  # what a run killed at step 2 leaves: no checkpoint
    f.writelines(json.dumps(r) + '\n' for r in first_records)
  assert first_records[0]['step'] == 0 and 'eval/sc_clean_loss' in first_records[0]
  train.run(train.TrainConfig(model_dir=str(tmp_path), **{**SETTINGS, 'total_steps': 2, 'tau': None}))
  records = metrics_io.read_records(os.path.join(tmp_path, metrics_io.METRICS_FILE))
  assert [(r['step'], 'eval/sc_clean_loss' in r) for r in records] == [(0, True), (1, False), (2, False), (2, True)]


def test_a_rerun_of_a_finished_run_keeps_its_records_and_summary(reference_dir, tmp_path):
  model_dir = tmp_path / 'run'
  shutil.copytree(reference_dir, model_dir)
  before = strict_json(model_dir / 'summary.json')  # no bare NaN: the sc stage has no noisy validation loss
  assert before['stages'][1]['val_sc_noisy'] is None
  with open(model_dir / metrics_io.METRICS_FILE) as f:
    records = f.read()
  strict = [strict_json_line(line) for line in records.splitlines()]  # metrics.jsonl is strict JSON too:
  first_train = {r['stage']: r for r in reversed(strict) if 'train/loss' in r}  # a stage's first step measured
  assert [first_train[s]['seqs_per_second'] for s in ('hybrid', 'sc')] == [None, None]  # no throughput: null
  assert all(r['seqs_per_second'] > 0 for r in strict if 'train/loss' in r and r not in first_train.values())
  train.run(train.TrainConfig(model_dir=str(model_dir), **SETTINGS))  # restores step TOTAL, trains nothing
  after = strict_json(model_dir / 'summary.json')
  assert [row['seqs_per_second'] for row in after['stages']] == [row['seqs_per_second'] for row in before['stages']]
  assert all(row['seqs_per_second'] > 0 for row in after['stages'])
  with open(model_dir / metrics_io.METRICS_FILE) as f:
    assert f.read() == records


def test_a_rerun_with_another_model_stops_naming_it_and_keeps_checkpoints_and_history(reference_dir, tmp_path):
  model_dir = tmp_path / 'run'
  shutil.copytree(reference_dir, model_dir)
  listing = sorted(os.listdir(model_dir / 'checkpoints'))
  with open(model_dir / metrics_io.METRICS_FILE) as f:
    records = f.read()
  micro = train.TrainConfig(model_dir=str(model_dir), model=config_lib.preset('micro'), **SETTINGS)
  with pytest.raises(checkpointing.CheckpointMismatchError) as error:
    train.run(micro)
  assert 'embedding (' in str(error.value) and 'in the checkpoint but' in str(error.value)
  assert sorted(os.listdir(model_dir / 'checkpoints')) == listing  # nothing renamed
  with open(model_dir / metrics_io.METRICS_FILE) as f:
    assert f.read() == records  # nothing truncated


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
  config = train.TrainConfig(model_dir=str(tmp_path), **{**SETTINGS, 'learning_rate': 1e30,
                                                         'checkpoint_every': 1})
  with pytest.raises(train.NonFiniteLossError, match=r'non-finite loss at step (\d+).*sc_loss') as error:
    train.run(config)
  bad_step = int(error.value.args[0].split('step ')[1].split(':')[0])
  saved = [int(d) for d in os.listdir(os.path.join(tmp_path, 'checkpoints')) if d.isdigit()]
  assert saved and max(saved) < bad_step


@pytest.mark.parametrize('flags, message', [
    (['--gin.NO_SUCH_KNOB=1', '--gin.spactor.train.TrainConfig.no_such_field=1'], 'no_such_field'),
    (['--gin.TAU=100', '--gin.TOTAL_STEPS=10'], 'larger than the run'),
    (['--gin.LAMBDA1=-1.0'], 'lambda1'),
    (['--gin.TAU=2.5'], 'TAU'),
    (['--gin.MLM_RATIO=1.5'], 'MLM_RATIO'),
    (['--gin.TAU=1 2'], 'TAU = 1 2'),  # malformed values: a parse error, not a traceback
    (['--gin.TAU=('], 'TAU = ('),
])
def test_bad_command_line_stops_with_a_clear_message_and_writes_nothing(tmp_path, flags, message):
  model_dir = tmp_path / 'run'
  argv = ['--gin_file=gin/runs/demo.gin', f'--gin.MODEL_DIR={str(model_dir)!r}', *flags]
  cwd = os.getcwd()
  try:
    os.chdir(REPO)
    with pytest.raises(SystemExit) as exit_info:
      train.main(argv)
  finally:
    os.chdir(cwd)
    gin.clear_config()
  assert message in str(exit_info.value)
  assert not model_dir.exists()


def test_missing_gin_file_is_named(tmp_path):
  with pytest.raises(SystemExit, match='no_such.gin'):
    try:
      train.main(['--gin_file=no_such.gin', f'--gin.MODEL_DIR={str(tmp_path)!r}'])
    finally:
      gin.clear_config()


def test_validation_split_smaller_than_one_batch_is_named(tmp_path):
  config = train.TrainConfig(model_dir=str(tmp_path), **{**SETTINGS, 'batch_size': 256, 'inputs_length': 512})
  with pytest.raises(ValueError, match='fewer than one batch'):
    train.run(config)
