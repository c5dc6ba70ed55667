"""launch_tpu.sh: dry runs print exactly the gcloud / t5x.train commands; bad options fail clearly.

Every printed command is parsed back with shlex (as bash would read it), so these tests also check the quoting.
"""
import os
import re
import shlex
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'launch_tpu.sh')
REQUIRED = ['--project', 'proj', '--zone', 'us-central2-b', '--accelerator-type', 'v4-64',
            '--bucket', 'gs://bkt/runs', '--repo-url', 'https://example.com/spactor.git']
LOC = ['--zone=us-central2-b', '--project=proj']


def launch(*args, env=None):
  return subprocess.run(['bash', SCRIPT, *args], capture_output=True, text=True, timeout=60,
                        env={**os.environ, **(env or {})})


def dry_run(*args):
  result = launch('--dry-run', *args)
  assert result.returncode == 0, result.stderr
  return [shlex.split(line) for line in result.stdout.splitlines() if not line.startswith('#')]


def remote(cmd):
  """The words of the command an ssh line runs on the workers (as `bash -c` reads it)."""
  assert cmd[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh'] and '--worker=all' in cmd
  (command,) = [a for a in cmd if a.startswith('--command=')]
  return shlex.split(command[len('--command='):])


def train_runs(cmds):
  """(stage-1 or stage-2 t5x.train argv) for each ssh line that runs t5x.train, in order."""
  runs = []
  for cmd in cmds:
    if cmd[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh']:
      words = remote(cmd)
      if 't5x.train' in words:
        assert words[:3] == ['cd', '~/spactor', '&&']
        runs.append(words[3:])
  return runs


def stage1(tau, size='base', bucket='gs://bkt/runs', exp='spactor-base', l1='10', l2='10', mlm='0.15'):
  return ['python3', '-m', 't5x.train', f'--gin_file=gin/t5x/models/t5_1_0_{size}_spactor.gin',
          '--gin_file=gin/t5x/runs/spactor_stage1.gin', f"--gin.MODEL_DIR='{bucket}/{exp}/tau{tau}/stage1'",
          "--gin.MIXTURE_OR_TASK_NAME='spactor_hybrid_c4'", f'--gin.TAU={tau}',
          f'--gin.LAMBDA1={l1}', f'--gin.LAMBDA2={l2}', f'--gin.MLM_RATIO={mlm}', '--gin.BATCH_SIZE=2048']


def stage2(tau, total=1000000, size='base', bucket='gs://bkt/runs', exp='spactor-base', l2='10'):
  return ['python3', '-m', 't5x.train', f'--gin_file=gin/t5x/models/t5_1_0_{size}.gin',
          '--gin_file=gin/t5x/runs/spactor_stage2.gin', f"--gin.MODEL_DIR='{bucket}/{exp}/tau{tau}/stage2'",
          "--gin.MIXTURE_OR_TASK_NAME='spactor_sc_c4'", f'--gin.TRAIN_STEPS={total}', f'--gin.TAU={tau}',
          f"--gin.STAGE1_DIR='{bucket}/{exp}/tau{tau}/stage1'", f'--gin.LAMBDA2={l2}', '--gin.BATCH_SIZE=2048']


def baseline(total=1000000, size='base', bucket='gs://bkt/runs', exp='spactor-base', corpus='c4', l2='10'):
  return ['python3', '-m', 't5x.train', f'--gin_file=gin/t5x/models/t5_1_0_{size}.gin',
          '--gin_file=gin/t5x/runs/sc_baseline.gin', f"--gin.MODEL_DIR='{bucket}/{exp}/sc_baseline'",
          f"--gin.MIXTURE_OR_TASK_NAME='spactor_sc_{corpus}'", f'--gin.TRAIN_STEPS={total}', f'--gin.LAMBDA2={l2}',
          '--gin.BATCH_SIZE=2048']


def test_default_run_creates_installs_and_runs_both_stages():
  cmds = dry_run(*REQUIRED)
  assert cmds[0] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'describe', 'spactor-v4-64', *LOC]
  assert cmds[1] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'spactor-v4-64', *LOC,
                     '--accelerator-type=v4-64', '--version=tpu-ubuntu2204-base']
  install = ' '.join(remote(cmds[2]))
  assert 'git clone --depth 1 --branch main https://example.com/spactor.git ~/spactor' in install
  assert "pip install -e .[tpu]" in install
  assert 'pip install --no-deps git+https://github.com/google-research/t5x git+https://github.com/google/airio ' \
         'git+https://github.com/google-research/jestimator' in install
  assert train_runs(cmds) == [stage1(120000), stage2(120000)]
  assert len(cmds) == 5


def test_overrides_reach_both_stages():
  cmds = dry_run(*REQUIRED, '--model-size', 'large', '--tau', '250000', '--total-steps', '500000',
                 '--lambda1', '50', '--lambda2', '2.5', '--experiment', 'abl', '--gin', 'BATCH_SIZE=256',
                 '--tfds-data-dir', 'gs://data/tfds/', '--tpu-name', 'mytpu', '--spot', '--runtime-version', 'v9')
  assert cmds[1][-2:] == ['--version=v9', '--spot']
  assert cmds[1][5] == 'mytpu'
  extra = ['--tfds_data_dir=gs://data/tfds', '--gin.BATCH_SIZE=256']
  s1, s2 = train_runs(cmds)
  # Table 5: large masks 20% for the generator by default.
  assert s1 == stage1(250000, 'large', exp='abl', l1='50', l2='2.5', mlm='0.2') + extra
  assert s2 == stage2(250000, 500000, 'large', exp='abl', l2='2.5') + extra
  # The SC baseline trains on the same λ2·L_SC as stage 2 (gin/t5x/runs/sc_baseline.gin).
  (b,) = train_runs(dry_run(*REQUIRED, '--tau', '0', '--lambda2', '2.5'))
  assert b == baseline(l2='2.5')


def test_sweep_tau_runs_one_experiment_per_tau_with_distinct_dirs():
  cmds = dry_run(*REQUIRED, '--sweep-tau', '60000,120000,250000', '--mlm-ratio', '0.3')
  runs = train_runs(cmds)
  expected = []
  for tau in (60000, 120000, 250000):
    expected += [stage1(tau, mlm='0.3'), stage2(tau)]
  assert runs == expected
  model_dirs = [a for run in runs for a in run if a.startswith('--gin.MODEL_DIR=')]
  assert len(set(model_dirs)) == 6


def test_the_sc_baseline_runs_with_baseline_or_tau_0_in_its_own_dir():
  runs = train_runs(dry_run(*REQUIRED, '--sweep-tau', '60000,120000', '--baseline', '--corpus', 'sotu'))
  sotu = lambda run: [a.replace("_c4'", "_sotu'") for a in run]
  assert runs == [baseline(corpus='sotu'), sotu(stage1(60000)), sotu(stage2(60000)), sotu(stage1(120000)),
                  sotu(stage2(120000))]
  # A 0 in the sweep is the same baseline, where it stands; --baseline then adds nothing.
  runs = train_runs(dry_run(*REQUIRED, '--sweep-tau', '120000,0', '--total-steps', '200000', '--baseline'))
  assert runs == [stage1(120000), stage2(120000, 200000), baseline(200000)]
  assert train_runs(dry_run(*REQUIRED, '--tau', '0')) == [baseline()]


def test_tarball_is_copied_and_detach_chains_everything_in_one_background_job():
  cmds = dry_run(*REQUIRED[:-2], '--tarball', 'src.tar.gz', '--sweep-tau', '1000,2000', '--total-steps', '3000',
                 '--detach', '--skip-install')
  assert not any('scp' in c for c in cmds)  # --skip-install
  cmds = dry_run(*REQUIRED[:-2], '--tarball', 'src.tar.gz', '--sweep-tau', '1000,2000', '--total-steps', '3000',
                 '--detach')
  assert cmds[2] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp', 'src.tar.gz', 'spactor-v4-64:spactor.tar.gz',
                     *LOC, '--worker=all']
  assert 'tar -xzf ~/spactor.tar.gz -C ~/spactor' in ' '.join(remote(cmds[3]))
  words = remote(cmds[4])
  assert words[:6] == ['mkdir', '-p', '~/spactor-logs', '&&', 'nohup', 'bash']
  assert words[6] == '-c' and words[8:] == ['>', '~/spactor-logs/spactor-base.log', '2>&1', '<', '/dev/null', '&']
  runs = words[7].split(' && ')  # the chain bash -c runs
  assert runs[0] == 'cd ~/spactor'
  assert [shlex.split(r) for r in runs[1:]] == [stage1(1000), stage2(1000, 3000), stage1(2000), stage2(2000, 3000)]


def test_dry_run_never_calls_gcloud(tmp_path):
  fake = tmp_path / 'gcloud'
  fake.write_text(f'#!/bin/sh\ntouch {tmp_path}/called\n')
  fake.chmod(0o755)
  result = launch('--dry-run', *REQUIRED, env={'PATH': f'{tmp_path}:{os.environ["PATH"]}'})
  assert result.returncode == 0 and 'gcloud compute tpus' in result.stdout
  assert not (tmp_path / 'called').exists()


def test_help_documents_every_option():
  result = launch('--help')
  assert result.returncode == 0
  with open(SCRIPT) as f:  # the option patterns of the script's `case` statements
    parsed = set(re.findall(r'^\s*((?:-h\|)?--[a-z0-9-]+)\)', f.read(), re.M))
  parsed = {o for pattern in parsed for o in pattern.split('|')}
  assert len(parsed) > 20
  for option in parsed:
    assert option in result.stdout, option


@pytest.mark.parametrize('args, message', [
    ([], 'missing required option(s): --project, --zone, --accelerator-type, --bucket, --repo-url or --tarball'),
    (REQUIRED[:4], 'missing required option(s): --accelerator-type, --bucket, --repo-url or --tarball'),
    (REQUIRED + ['--tau', '12.5'], "τ must be a non-negative integer (0 = the SC baseline), got '12.5'"),
    (REQUIRED + ['--tau', '-5'], "τ must be a non-negative integer (0 = the SC baseline), got '-5'"),
    (REQUIRED + ['--sweep-tau', '60000,abc'], "τ must be a non-negative integer (0 = the SC baseline), got 'abc'"),
    (REQUIRED + ['--sweep-tau', '0,00'], 'τ=0 given twice'),
    (REQUIRED + ['--tau', '2000000'], 'τ=2000000 must be less than --total-steps=1000000'),
    (REQUIRED + ['--sweep-tau', '100,100'], 'τ=100 given twice'),
    (REQUIRED + ['--total-steps', '1e6'], "--total-steps must be a positive integer, got '1e6'"),
    (REQUIRED + ['--mlm-ratio', '1.5'], '--mlm-ratio must be a number in (0, 1)'),
    (REQUIRED + ['--lambda1', '-1'], '--lambda1 must be a non-negative number'),
    (REQUIRED + ['--model-size', 'xl'], '--model-size must be tiny, small, base or large'),
    (REQUIRED + ['--tarball', 'x.tgz'], 'either --repo-url or --tarball, not both'),
    (REQUIRED[:6] + ['--bucket', '/local/dir'] + REQUIRED[8:], '--bucket must be a gs:// path'),
    (REQUIRED + ['--tau'], 'option --tau needs a value'),
    (REQUIRED + ['--frobnicate', '1'], "unknown option '--frobnicate'"),
])
def test_bad_options_fail_with_a_clear_error(args, message):
  result = launch('--dry-run', *args)
  assert result.returncode == 2
  assert result.stdout == ''
  assert message in result.stderr
