r"""`make study`: the small-scale replication study on this CPU, resumable, about 90 minutes on a 2-core machine.

  python -m spactor.study --workdir=runs/study --doc=docs/study.md

1. Pre-training with gin/runs/demo.gin and the study's pinned settings (Settings.extra_gin: 800 steps, τ = 500,
   the demo's LR and generator step size, λ1 = 10, MLM ratio 0.15), the same steps for each setting, SEEDS seeds
   each: the SC baseline (τ = 0), SpacTor(τ), SpacTor(τ = ∞), and SpacTor(τ) with the old settings (per-term
   token means and a plain L_SC after τ: `--gin.LOSS_NORMALIZATION="'token_mean'" --gin.STAGE2_SC_WEIGHT=1.0`) to
   show what the fidelity fixes change (run after step 3, so that an interrupted study lacks the least central part).
2. Each final checkpoint fine-tuned on the embedded downstream task (spactor.downstream.embedded.TASK_NAME) with
   `python -m spactor.finetune` (gin/finetune/rt_polarity.gin + cpu.gin), in <run>/finetune_rt.
3. SSR the same way (ssr/demo.py's pieces): a tiny generator and a micro student pre-trained with span corruption,
   the generator's rewrites, then the student continually pre-trained with SSR and with span corruption (SC-cont)
   for the same steps, SEEDS seeds each, every student fine-tuned on the same task.
4. The comparison report (spactor.report) of step 1-2 in WORKDIR/report, its figures copied to docs/study/, and
   the generated part of docs/study.md (between the study markers; the text around them is kept) rewritten.

Every step is the command a user would type (printed, its output in WORKDIR/study.log). A finished run
(summary.json of its full length, not preempted) is skipped; an unfinished one resumes from its checkpoint; the
report is rewritten from whatever has finished, so an interrupted study leaves an honest partial docs/study.md.
"""
import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Optional

from spactor import cli, report, run_records
from spactor.metrics_io import read_json
from spactor.errors import UsageError

BEGIN, END = '<!-- study:begin (written by python -m spactor.study) -->', '<!-- study:end -->'
FINETUNE_TASK = 'spactor_rt_polarity'  # spactor.downstream.embedded.TASK_NAME (not imported: it loads TF/SeqIO)


@dataclasses.dataclass(frozen=True)
class Settings:
  """What the study runs. The defaults are `make study`'s; tests shrink them."""
  workdir: str = 'runs/study'
  doc: Optional[str] = 'docs/study.md'
  seeds: tuple = (0, 1, 2)
  steps: Optional[int] = None  # None: demo.gin's TOTAL_STEPS
  tau: Optional[int] = None  # None: demo.gin's TAU
  old_settings: bool = True
  finetune_steps: int = 800  # fewer leave the tiny model at chance on the task
  finetune_eval_examples: Optional[int] = None  # None: the whole validation split
  ssr: bool = True
  ssr_steps: int = 200
  pretrain_gin: tuple = ('gin/runs/demo.gin',)
  # The study's own pre-training settings on top of demo.gin, pinned so that tuning the demo does not change a
  # study in progress (a study directory refuses other settings). They are the demo's (gin/runs/demo.gin, found in
  # docs/study.md's sweep): L_SC leaves its plateau, the RTD head learns from step ~400, the generator from ~450.
  extra_gin: tuple = ('--gin.TOTAL_STEPS=800', '--gin.TAU=500', '--gin.spactor.train.TrainConfig.learning_rate=0.5',
                      '--gin.spactor.train.TrainConfig.warmup_steps=400',
                      '--gin.spactor.train.TrainConfig.generator_lr_scale=1.25', '--gin.LAMBDA1=10.0',
                      '--gin.MLM_RATIO=0.15')
  finetune_gin: tuple = ('gin/finetune/rt_polarity.gin', 'gin/finetune/cpu.gin')
  extra_finetune_gin: tuple = ()
  # The micro SSR students predict one class for every review at the fine-tuning LR of 1e-3 (both objectives, every
  # seed: 48-52% accuracy); at 1e-2 they learn the task (docs/study.md).
  ssr_finetune_gin: tuple = ('--gin.LEARNING_RATE=0.01',)
  eval_every: Optional[int] = None
  report_only: bool = False  # write the report and the doc from what has finished; run nothing


@dataclasses.dataclass(frozen=True)
class Job:
  name: str
  argv: tuple  # after `python -m`
  model_dir: str
  total_steps: Optional[int] = None  # None: always run (the command itself skips finished work)
  label: Optional[str] = None  # a pre-training run's report label
  seed: Optional[int] = None


def _gin(name: str, value) -> str:
  return f'--gin.{name}={value!r}' if isinstance(value, str) else f'--gin.{name}={value}'


# The settings before the fidelity fixes: per-term token means, and a plain L_SC after τ (the step-size drop).
OLD_SETTINGS = (_gin('LOSS_NORMALIZATION', 'token_mean'), _gin('STAGE2_SC_WEIGHT', 1.0))


def pretrain_settings(s: Settings, tau: int) -> list[tuple[str, str, Optional[int], tuple]]:
  """(directory name, report label, τ, extra flags) of each pre-training setting."""
  settings = [('sc', 'SC baseline', 0, ()), (f'spactor_tau{tau}', f'SpacTor(τ={tau})', tau, ()),
              ('spactor_inf', 'SpacTor(τ=∞)', None, ())]
  if s.old_settings:
    settings.append((f'spactor_tau{tau}_old', f'SpacTor(τ={tau}), old settings', tau, OLD_SETTINGS))
  return settings


def pretrain_jobs(s: Settings, steps: int, tau: int) -> list[Job]:
  jobs = []
  for name, label, run_tau, extra in pretrain_settings(s, tau):
    for seed in s.seeds:
      model_dir = os.path.join(s.workdir, f'{name}_seed{seed}')
      argv = (('spactor.train',) + tuple(f'--gin_file={f}' for f in s.pretrain_gin) + tuple(s.extra_gin) + (
          _gin('MODEL_DIR', model_dir), _gin('TOTAL_STEPS', steps), _gin('TAU', run_tau),
          _gin('spactor.train.TrainConfig.seed', seed), _gin('spactor.train.TrainConfig.plot', False))
          + ((_gin('spactor.train.TrainConfig.eval_every', s.eval_every),) if s.eval_every else ())
          + tuple(extra))
      jobs.append(Job(f'pretrain {name} seed {seed}', argv, model_dir, steps, label, seed))
  return jobs


def finetune_job(s: Settings, init_checkpoint: str, model_gin: tuple = (), seed: int = 0, extra: tuple = ()) -> Job:
  model_dir = os.path.join(init_checkpoint, 'finetune_rt')
  argv = (('spactor.finetune',) + tuple(f'--gin_file={f}' for f in s.finetune_gin + tuple(model_gin)) + (
      _gin('MODEL_DIR', model_dir), _gin('INIT_CHECKPOINT', init_checkpoint), _gin('TOTAL_STEPS', s.finetune_steps),
      _gin('EVAL_EVERY', s.finetune_steps), _gin('spactor.finetune.FinetuneConfig.seed', seed),
      _gin('spactor.finetune.FinetuneConfig.eval_examples', s.finetune_eval_examples)) + tuple(s.extra_finetune_gin)
          + tuple(extra))
  return Job(f'fine-tune {os.path.basename(init_checkpoint)}', argv, model_dir, s.finetune_steps, seed=seed)


def ssr_jobs(s: Settings) -> list[Job]:
  """ssr/demo.py's pipeline, then SSR and SC-cont students per seed, each fine-tuned."""
  from ssr import demo
  work = os.path.join(s.workdir, 'ssr')
  generator, student, data = (os.path.join(work, d) for d in ('generator', 'student', 'ssr-data'))
  jobs = [
      Job('ssr: pre-train the generator', ('spactor.train', '--gin_file=gin/ssr/demo_generator.gin',
                                           _gin('MODEL_DIR', generator), _gin('TOTAL_STEPS', demo.GENERATOR_STEPS)),
          generator, demo.GENERATOR_STEPS),
      Job('ssr: pre-train the student', ('spactor.train', '--gin_file=gin/ssr/demo_student.gin',
                                         _gin('MODEL_DIR', student), _gin('TOTAL_STEPS', demo.STUDENT_STEPS)),
          student, demo.STUDENT_STEPS),
      Job('ssr: rewrite with the generator', tuple(demo.generate_command(sys.executable, generator,
                                                                         demo.GENERATOR_STEPS, 'tiny', data)[2:]),
          data)]
  for objective, gin_file in (('ssr', 'gin/ssr/ssr.gin'), ('sc-cont', 'gin/ssr/sc_cont.gin')):
    for seed in s.seeds:
      model_dir = os.path.join(work, f'{objective}_seed{seed}')
      argv = ('ssr.continual', f'--gin_file={gin_file}', '--gin_file=gin/ssr/cpu.gin',
              f'--gin_file={demo.STUDENT_MODEL_GIN}', _gin('MODEL_DIR', model_dir), _gin('INIT_CHECKPOINT', student),
              _gin('DATA_DIR', data), _gin('TOTAL_STEPS', s.ssr_steps), _gin('BATCH_SIZE', demo.BATCH_SIZE),
              _gin('INPUTS_LENGTH', demo.INPUTS_LENGTH), _gin('ssr.continual.ContinualConfig.seed', seed))
      jobs.append(Job(f'ssr: {objective} seed {seed}', argv, model_dir, s.ssr_steps, objective, seed))
      jobs.append(finetune_job(s, model_dir, (demo.STUDENT_MODEL_GIN,), seed, s.ssr_finetune_gin))
  return jobs


def finished(job: Job) -> bool:
  """A run of the job's full length that was not preempted (its summary.json says so)."""
  if job.total_steps is None:
    return False
  summary = read_json(os.path.join(job.model_dir, 'summary.json')) or {}
  return summary.get('total_steps') == job.total_steps and summary.get('preempted') is False



def run_command(job: Job, log_path: str) -> None:
  """Runs the job's command as a user would; its stdout is echoed, its stderr goes to the log."""
  command = [sys.executable, '-m', *job.argv]
  print('$ ' + ' '.join(command), flush=True)
  with open(log_path, 'a') as log:
    log.write(f'\n$ {" ".join(command)}\n')
    log.flush()
    proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=log, text=True)
  sys.stdout.write(proc.stdout[-2000:])
  if proc.returncode:
    raise SystemExit(f'{job.name} failed (exit {proc.returncode}); its log is {log_path}')


def run_job(job: Job, log_path: str, timings: dict, runner=run_command) -> None:
  """Runs one job unless it has finished; records its wall time."""
  if finished(job):
    print(f'[done] {job.name}', flush=True)
    return
  print(f'\n[run] {job.name}', flush=True)
  start = time.time()
  runner(job, log_path)
  timings[job.name] = round(time.time() - start, 1)
  print(f'  ({timings[job.name]:.0f}s)', flush=True)


def demo_defaults(s: Settings) -> tuple[int, int, dict]:
  """TOTAL_STEPS, TAU and the run settings as the study's gin files and pinned bindings give them."""
  import gin
  from spactor import train  # registers the configurables
  gin.clear_config()
  try:
    files, bindings, _, _ = cli.parse_flags([f'--gin_file={f}' for f in s.pretrain_gin] + list(s.extra_gin))
    cli.parse_gin(files, bindings, [])
    steps, tau = (gin.query_parameter(f'{name}/gin.macro.value') for name in ('TOTAL_STEPS', 'TAU'))
    config = train.TrainConfig()
  finally:
    gin.clear_config()
  steps, tau = (s.steps or steps), (s.tau if s.tau is not None else tau)
  fields = ('batch_size', 'inputs_length', 'corpus', 'mlm_ratio', 'lambda1', 'lambda2', 'loss_normalization',
            'stage2_sc_weight', 'learning_rate', 'warmup_steps', 'generator_lr_scale', 'z_loss', 'eval_every',
            'eval_batches')
  settings = {'total_steps': steps, 'tau': tau, 'model': repr(config.model),
              **{name: getattr(config, name) for name in fields}, **finetune_settings(s)}
  return steps, tau, settings


def finetune_settings(s: Settings) -> dict:
  """What decides the fine-tuning runs: a finished one is skipped, so these are guarded like pre-training's."""
  return {'finetune_steps': s.finetune_steps, 'finetune_gin': list(s.finetune_gin + s.extra_finetune_gin),
          'ssr_finetune_gin': list(s.ssr_finetune_gin)}


def check_same_settings(s: Settings, settings: dict) -> None:
  """A study directory holds one study: resuming it with other pre-training or fine-tuning settings would mix
  runs."""
  path = os.path.join(s.workdir, 'study_settings.json')
  before = read_json(path)
  if before is None:
    with open(path, 'w') as f:
      json.dump(settings, f, indent=2)
    return
  changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
  if changed:
    what = 'fine-tuning' if set(changed) <= set(finetune_settings(s)) else 'pre-training'
    raise UsageError(f'{s.workdir} holds a study run with other {what} settings ({", ".join(changed)} '
                     f'differ from {path}); resuming it would mix runs: give another --workdir')


# --- the write-up ---------------------------------------------------------------------------------------------


def pretrain_report(s: Settings, jobs: list[Job]) -> Optional[dict]:
  """The comparison report over the finished pre-training runs (with their fine-tuning results), or None."""
  runs = []
  for job in jobs:
    if finished(job):
      runs.append(run_records.read_run(job.model_dir, job.label))
      runs[-1].seed = job.seed
  if not any(r.tau == 0 for r in runs):
    return None
  return report.write(runs, os.path.join(s.workdir, 'report'))


def ssr_rows(s: Settings, jobs: list[Job]) -> list[dict]:
  """Per SSR/SC-cont student: its continual pre-training validation losses and its fine-tuned accuracy."""
  rows = []
  for job in jobs:
    if job.argv[0] != 'ssr.continual' or not finished(job):
      continue
    summary = read_json(os.path.join(job.model_dir, 'summary.json')) or {}
    downstream = run_records.read_downstream(job.model_dir).get(FINETUNE_TASK, {})
    rows.append({'objective': job.label, 'seed': job.seed, 'final_eval': summary.get('final_eval', {}),
                 'downstream': downstream})
  return rows


def ssr_markdown(rows: list[dict]) -> list[str]:
  if not rows:
    return ['No SSR student has finished yet.']
  from spactor.report_tables import Spread
  lines = ['| objective | seeds | val SSR loss | val SC loss | fine-tuned accuracy |', '|---|---|---|---|---|']
  for objective in dict.fromkeys(r['objective'] for r in rows):
    mine = [r for r in rows if r['objective'] == objective]
    cell = lambda values: report._spread(Spread.of(values).as_json(), '{:.4f}')
    lines.append(f'| {objective} | {", ".join(str(r["seed"]) for r in mine)} | '
                 f'{cell(r["final_eval"].get("ssr_loss") for r in mine)} | '
                 f'{cell(r["final_eval"].get("sc_loss") for r in mine)} | '
                 f'{cell(r["downstream"].get("accuracy") for r in mine)} |')
  return lines


def settings_markdown(built: Optional[dict]) -> list[str]:
  """The objective's settings each label ran with (the runs' summary.json), so the numbers say what made them."""
  if not built:
    return []
  rows = {}
  for run in built['runs']:
    rows.setdefault(run['label'], run.get('settings') or {})
  names = sorted({k for values in rows.values() for k in values})
  if not names:
    return []
  lines = ['| label | ' + ' | '.join(names) + ' |', '|---|' + '---|' * len(names)]
  lines += [f'| {label} | ' + ' | '.join(str(values.get(n, '-')) for n in names) + ' |'
            for label, values in rows.items()]
  return lines + ['']


def generated_section(s: Settings, built: Optional[dict], ssr: list[dict], jobs: list[Job], timings: dict,
                      steps: int, tau: int) -> str:
  done = sum(finished(j) for j in jobs if j.total_steps)
  total = sum(1 for j in jobs if j.total_steps)
  partial = ' (partial: `make study` resumes it)' if done < total else ''
  lines = [BEGIN, '', f'Generated {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())} from {s.workdir}: '
           f'{done} of {total} runs finished{partial}.'
           f' Pre-training: {steps} steps, τ = {tau}, seeds {", ".join(map(str, s.seeds))}, '
           f'{" ".join(s.pretrain_gin)}; fine-tuning: {s.finetune_steps} steps on {FINETUNE_TASK}.', '']
  if timings:
    lines += [f'Wall time of the commands this invocation ran: {sum(timings.values()) / 60:.1f} min.', '']
  lines += settings_markdown(built)
  if built is None:
    lines += ['No SC baseline run has finished yet: no comparison.', '']
  else:
    body = report.markdown(built).replace('](', '](study/').split('\n', 1)[1]  # figures live in docs/study/
    lines += ['### Pre-training comparison (spactor.report)', body.replace('\n## ', '\n#### ')]
  lines += ['### SSR: continual pre-training of the micro student, then fine-tuning', '',
            f'Fine-tuning as above, with {" ".join(s.ssr_finetune_gin) or "the same settings"}.', '']
  lines += ssr_markdown(ssr)
  lines += ['', END]
  return '\n'.join(lines)


def write_doc(doc_path: str, section: str, figures_from: Optional[str]) -> None:
  """Replaces the generated section of doc_path (or appends it); copies the report's figures to docs/study/."""
  text = open(doc_path).read() if os.path.exists(doc_path) else '# The replication study\n\n'
  if BEGIN in text and END in text:
    text = text[:text.index(BEGIN)] + section + text[text.index(END) + len(END):]
  else:
    text = text.rstrip('\n') + '\n\n' + section + '\n'
  if figures_from:
    figures = os.path.join(os.path.dirname(doc_path) or '.', 'study')
    os.makedirs(figures, exist_ok=True)
    for name in report.FIGURES.values():
      if os.path.exists(os.path.join(figures_from, name)):
        shutil.copy(os.path.join(figures_from, name), os.path.join(figures, name))
  tmp = doc_path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, doc_path)


def run(s: Settings, runner=run_command) -> Optional[dict]:
  os.makedirs(s.workdir, exist_ok=True)
  log_path = os.path.join(s.workdir, 'study.log')
  steps, tau, settings = demo_defaults(s)
  check_same_settings(s, settings)
  pretrain = pretrain_jobs(s, steps, tau)
  jobs = []
  for job in pretrain:
    jobs += [job, finetune_job(s, job.model_dir, seed=job.seed)]
  extra = ssr_jobs(s) if s.ssr else []
  # The old-settings runs (the last setting, a run and a fine-tuning per seed) after SSR: an interrupted study then
  # lacks the least central comparison.
  first = len(jobs) - (2 * len(s.seeds) if s.old_settings else 0)
  order = jobs[:first] + extra + jobs[first:]
  timings = {}
  try:
    for job in [] if s.report_only else order:
      run_job(job, log_path, timings, runner)
  finally:  # the write-up of whatever finished, also when a step failed or the study was interrupted
    built = pretrain_report(s, pretrain)
    if s.doc:
      write_doc(s.doc, generated_section(s, built, ssr_rows(s, extra), jobs + extra, timings, steps, tau),
                os.path.join(s.workdir, 'report') if built else None)
  return built


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(prog='python -m spactor.study', description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', default=Settings.workdir)
  parser.add_argument('--doc', default=Settings.doc, help='the Markdown file whose generated section is rewritten')
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--steps', type=int, help="pre-training steps (default: demo.gin's TOTAL_STEPS)")
  parser.add_argument('--tau', type=int, help="default: demo.gin's TAU")
  parser.add_argument('--finetune_steps', type=int, default=Settings.finetune_steps)
  parser.add_argument('--no_old_settings', action='store_true')
  parser.add_argument('--no_ssr', action='store_true')
  parser.add_argument('--report_only', action='store_true', help='only rewrite the report and the doc')
  args = parser.parse_args(argv)
  with cli.usage_errors_reported():
    run(Settings(workdir=args.workdir, doc=args.doc, seeds=tuple(int(x) for x in args.seeds.split(',')),
                 steps=args.steps, tau=args.tau, finetune_steps=args.finetune_steps,
                 old_settings=not args.no_old_settings, ssr=not args.no_ssr, report_only=args.report_only))


if __name__ == '__main__':
  main(sys.argv[1:])
