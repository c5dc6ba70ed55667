"""`make study` (spactor.study) on tiny settings: every command it would run builds its run config (no training),
finished runs are skipped and unfinished ones run again, and the write-up keeps the hand-written text of the doc."""
import dataclasses
import json
import os

import gin
import pytest

from spactor import cli, study
from spactor import config as config_lib
from tests.test_report import HYBRID, write_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_config(job: study.Job):
  """The run config the job's command line builds (gin parsed as the entry point parses it), without running, and
  the width of its preset model."""
  files, bindings, search_paths, _ = cli.parse_flags(list(job.argv[1:]))
  if job.argv[0] == 'spactor.train':
    from spactor.trainer import TrainConfig as make
  elif job.argv[0] == 'spactor.finetune':
    from spactor.finetune import FinetuneConfig as make
  else:
    from ssr.continual import ContinualConfig as make
  try:
    cli.parse_gin(files, bindings, search_paths)
    return make(), config_lib.preset().t5.emb_dim  # the model size the gin files bind
  finally:
    gin.clear_config()


def test_every_command_builds_its_config(tmp_path, monkeypatch):
  monkeypatch.chdir(ROOT)
  settings = study.Settings(workdir=str(tmp_path), seeds=(0, 1))
  steps, tau, _ = study.demo_defaults(settings)
  pretrain = study.pretrain_jobs(settings, steps, tau)
  assert len(pretrain) == 8  # baseline, τ, ∞, τ with the old settings; two seeds each
  configs = {job.model_dir: (job, make_config(job)[0]) for job in pretrain}
  by_label = {}
  for job, config in configs.values():
    assert (config.model_dir, config.total_steps, config.seed) == (job.model_dir, steps, job.seed)
    by_label.setdefault(job.label, set()).add((config.tau, config.loss_normalization, config.sc_weight_after_tau))
  assert by_label == {'SC baseline': {(0, 'example_sum', 10.0)}, f'SpacTor(τ={tau})': {(tau, 'example_sum', 10.0)},
                      'SpacTor(τ=∞)': {(None, 'example_sum', 10.0)},
                      f'SpacTor(τ={tau}), old settings': {(tau, 'token_mean', 1.0)}}
  finetune, _ = make_config(study.finetune_job(settings, pretrain[0].model_dir, seed=1))
  assert (finetune.init_checkpoint, finetune.task, finetune.seed) == (pretrain[0].model_dir, study.FINETUNE_TASK, 1)
  assert finetune.total_steps == settings.finetune_steps and finetune.eval_every == settings.finetune_steps
  ssr_jobs = study.ssr_jobs(settings)
  for job in ssr_jobs:
    if job.argv[0] in ('spactor.train', 'ssr.continual', 'spactor.finetune'):
      config, width = make_config(job)
      assert config.model_dir == job.model_dir and config.total_steps == job.total_steps
      if job.argv[0] != 'spactor.train':
        assert width == 64  # the micro student
      if job.argv[0] == 'spactor.finetune':
        assert config.learning_rate == 0.01  # the micro students' own fine-tuning LR (Settings.ssr_finetune_gin)
  assert [j.label for j in ssr_jobs if j.argv[0] == 'ssr.continual'] == ['ssr', 'ssr', 'sc-cont', 'sc-cont']


def fake_runner(calls):
  """Writes what each command leaves behind (metrics.jsonl and summary.json) instead of training."""
  losses = {'SC baseline': [9, 6, 5, 4.5, 4.0], 'SpacTor(τ=200)': [9, 5.8, 4.9, 4.3, 3.9],
            'SpacTor(τ=∞)': [9, 5.9, 5.0, 4.4, 4.05]}

  def run(job, log_path):
    calls.append(job.name)
    if job.argv[0] == 'spactor.train':
      tau = {'SC baseline': 0, 'SpacTor(τ=∞)': None}.get(job.label, 200)
      write_run(job.model_dir, losses[job.label], tau, HYBRID if tau != 0 else {'sc': 10.0}, seed=job.seed)
    else:
      os.makedirs(job.model_dir, exist_ok=True)
      with open(os.path.join(job.model_dir, 'summary.json'), 'w') as f:
        json.dump({'task': study.FINETUNE_TASK, 'total_steps': job.total_steps, 'preempted': False,
                   'final_eval': {'step': job.total_steps,
                                  f'{study.FINETUNE_TASK}/accuracy': 0.5 + 0.1 * (job.seed or 0)}}, f)
  return run


def test_study_skips_finished_runs_and_rewrites_only_its_section(tmp_path, monkeypatch):
  monkeypatch.chdir(ROOT)
  doc = tmp_path / 'study.md'
  doc.write_text(f'# Study\n\nHand-written reading.\n\n{study.BEGIN}\nold numbers\n{study.END}\n\nMore text.\n')
  settings = study.Settings(workdir=str(tmp_path / 'work'), doc=str(doc), seeds=(0, 1), steps=400, tau=200,
                            old_settings=False, ssr=False, finetune_steps=40)
  calls = []
  built = study.run(settings, runner=fake_runner(calls))
  assert len(calls) == 12  # 3 settings x 2 seeds, each pre-trained and fine-tuned
  groups = {g['label']: g for g in built['comparison']['groups']}
  assert groups['SpacTor(τ=200)']['steps_to_target']['mean'] == pytest.approx(375.0)  # 300 + 0.3 / 0.4 · 100
  accuracy = built['downstream']['groups'][0]['results'][f'{study.FINETUNE_TASK}/accuracy']
  assert accuracy['mean'] == pytest.approx(0.55) and accuracy['n'] == 2
  text = doc.read_text()
  assert text.startswith('# Study\n\nHand-written reading.') and text.endswith('More text.\n')
  assert 'old numbers' not in text and '12 of 12 runs finished.' in text and '](study/val_sc_vs_flops.png)' in text
  assert (tmp_path / 'study' / 'val_sc_vs_flops.png').exists()
  # Everything finished: nothing runs again. A preempted run (and only it) runs again.
  calls.clear()
  study.run(settings, runner=fake_runner(calls))
  assert calls == []
  (tmp_path / 'work' / 'sc_seed0' / 'summary.json').unlink()  # --report_only: the write-up of what has finished
  study.run(dataclasses.replace(settings, report_only=True), runner=fake_runner(calls))
  assert calls == [] and '11 of 12 runs finished (partial' in doc.read_text()
  summary_path = tmp_path / 'work' / 'sc_seed1' / 'summary.json'
  summary_path.write_text(json.dumps({**json.loads(summary_path.read_text()), 'preempted': True}))
  study.run(settings, runner=fake_runner(calls))
  assert calls == ['pretrain sc seed 0', 'pretrain sc seed 1']


def test_a_failed_step_still_writes_the_partial_doc(tmp_path, monkeypatch):
  monkeypatch.chdir(ROOT)
  doc = tmp_path / 'study.md'
  settings = study.Settings(workdir=str(tmp_path / 'work'), doc=str(doc), seeds=(0,), steps=400, tau=200,
                            old_settings=False, ssr=False)
  calls, run = [], None

  def failing(job, log_path):
    if job.label == 'SpacTor(τ=∞)':
      raise SystemExit(f'{job.name} failed')
    run(job, log_path)
  run = fake_runner(calls)
  with pytest.raises(SystemExit, match='spactor_inf seed 0 failed'):
    study.run(settings, runner=failing)
  assert '4 of 6 runs finished (partial: `make study` resumes it).' in doc.read_text()


def test_a_study_directory_refuses_other_settings(tmp_path, monkeypatch):
  monkeypatch.chdir(ROOT)
  settings = study.Settings(workdir=str(tmp_path), seeds=(0,), old_settings=False, ssr=False, doc=None)
  _, _, recorded = study.demo_defaults(settings)
  study.check_same_settings(settings, recorded)  # the first start records them
  study.check_same_settings(settings, recorded)
  other = study.demo_defaults(dataclasses.replace(settings, extra_gin=settings.extra_gin + ('--gin.LAMBDA1=50.0',)))[2]
  assert other['lambda1'] == 50.0
  with pytest.raises(ValueError, match=r'other pre-training settings \(lambda1 differ'):
    study.check_same_settings(settings, other)
  # Finished fine-tuning runs are skipped too, so their settings are held as well.
  retuned = study.demo_defaults(dataclasses.replace(settings, ssr_finetune_gin=('--gin.LEARNING_RATE=0.001',)))[2]
  with pytest.raises(ValueError, match=r'other fine-tuning settings \(ssr_finetune_gin differ'):
    study.check_same_settings(settings, retuned)


def test_the_old_settings_run_after_ssr(tmp_path, monkeypatch):
  """An interrupted study lacks the least central comparison: the old-settings runs (and their fine-tuning) come
  after the SSR students, everything else before."""
  monkeypatch.chdir(ROOT)
  settings = study.Settings(workdir=str(tmp_path), doc=None, seeds=(0,), steps=400, tau=200)
  calls = []
  study.run(settings, runner=lambda job, log_path: calls.append(job.name))
  first_ssr = next(i for i, name in enumerate(calls) if name.startswith('ssr:'))
  old = [i for i, name in enumerate(calls) if '_old' in name]
  assert calls[:first_ssr] == ['pretrain sc seed 0', 'fine-tune sc_seed0', 'pretrain spactor_tau200 seed 0',
                               'fine-tune spactor_tau200_seed0', 'pretrain spactor_inf seed 0',
                               'fine-tune spactor_inf_seed0']
  assert old == [len(calls) - 2, len(calls) - 1]
  assert calls[first_ssr:old[0]] == [job.name for job in study.ssr_jobs(settings)]
