r"""Memory: peak resident memory of the embedded default run and of a T5-base train step.

  .venv/bin/python bench/memory.py
  .venv/bin/python bench/memory.py --skip_demo --steps=base:4:128:32128:sc,base:4:128:32128:hybrid
  .venv/bin/python bench/memory.py --skip_demo --steps=base:8:512:32128:sc:none,base:8:512:32128:sc:full

1. The embedded default, shortened, under `/usr/bin/time -v` (its "Maximum resident set size"):
     .venv/bin/python -m spactor.train --gin_file=gin/runs/demo.gin --gin.MODEL_DIR="'/tmp/bench_demo'" \
         --gin.TOTAL_STEPS=20 --gin.TAU=10
   (MODEL_DIR is removed first, so the run trains instead of resuming; no persistent compilation cache.)
2. Train steps (preset:batch:inputs:model_vocab:stage[:remat_policy]), each in a fresh process: the trainer's own
   step on a synthetic batch, run a few times. Reported: the process's peak RSS (VmHWM), its RSS after imports (the
   Python/JAX/TF baseline), the bytes of the train state (params + Adafactor state) and XLA's memory analysis of
   the compiled step (arguments, outputs, temporaries). The SC stage is initialised directly (no generator ever
   allocated); the hybrid stage as the trainer does.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

DEFAULT_STEPS = 'base:4:128:32128:sc,base:4:128:32128:hybrid'
DEMO_DIR = '/tmp/bench_demo'
GiB = 2.0 ** 30


def proc_status_kib(field: str) -> int:
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith(field + ':'):
        return int(line.split()[1])
  return -1


def demo_peak_rss(python: str, total_steps: int = 20, tau: int = 10) -> dict:
  shutil.rmtree(DEMO_DIR, ignore_errors=True)
  command = [python, '-m', 'spactor.train', '--gin_file=gin/runs/demo.gin', f"--gin.MODEL_DIR='{DEMO_DIR}'",
             f'--gin.TOTAL_STEPS={total_steps}', f'--gin.TAU={tau}']
  env = {k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'}
  result = subprocess.run(['/usr/bin/time', '-v'] + command, cwd=common.REPO_ROOT, env=env, capture_output=True,
                          text=True)
  if result.returncode != 0:
    raise RuntimeError(f'demo run failed ({result.returncode}):\n{result.stderr[-3000:]}')
  peak_kib = int(re.search(r'Maximum resident set size \(kbytes\): (\d+)', result.stderr).group(1))
  wall = re.search(r'Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)', result.stderr).group(1)
  seconds = sum(float(x) * 60 ** i for i, x in enumerate(reversed(wall.split(':'))))
  return {'what': f'demo run ({total_steps} steps, tau {tau}; tiny, batch 16, inputs 128)',
          'peak_rss_gib': peak_kib * 1024 / GiB, 'wall_s': seconds, 'command': ' '.join(command)}


def step_child(spec: str, runs: int) -> dict:
  """In a fresh process: build one stage's train step, run it, report memory (printed as JSON)."""
  size, batch, inputs, vocab, stage, *remat = spec.split(':')
  remat_policy = remat[0] if remat else 'none'
  baseline_kib = proc_status_kib('VmRSS')
  import jax  # noqa: F401  (the baseline above is the interpreter and the bench module)
  from spactor import train  # noqa: F401
  imports_kib = proc_status_kib('VmRSS')
  bench = common.build_step_benches(size, int(batch), int(inputs), model_vocab=int(vocab), stages=(stage,),
                                    init_sc_directly=True, remat_policy=remat_policy)[stage]
  state_bytes = common.tree_bytes(bench.state)
  params_bytes = common.tree_bytes(bench.state.params)
  after_init_kib = proc_status_kib('VmRSS')
  bench.run(1)  # the first call of a compiled step also allocates
  start = time.perf_counter()
  bench.run(runs)
  step_s = (time.perf_counter() - start) / runs
  from spactor import model as model_lib
  return {
      'what': f'{size} {stage} train step (batch {batch}, inputs {inputs}, vocab {vocab}, remat {remat_policy})',
      'params_m': model_lib.param_count(bench.state.params) / 1e6,
      'peak_rss_gib': proc_status_kib('VmHWM') * 1024 / GiB,
      'rss_after_imports_gib': imports_kib * 1024 / GiB, 'rss_at_start_gib': baseline_kib * 1024 / GiB,
      'rss_after_init_compile_gib': after_init_kib * 1024 / GiB,
      'params_gib': params_bytes / GiB, 'train_state_gib': state_bytes / GiB,
      **{f'xla_{k.replace("_size_in_bytes", "")}_gib': v / GiB for k, v in bench.memory.items()
         if k != 'generated_code_size_in_bytes'},
      'step_s': step_s, 'compile_s': bench.compile_seconds,
  }


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--steps', default=DEFAULT_STEPS,
                      help='preset:batch:inputs:model_vocab:stage[:remat_policy], comma-separated')
  parser.add_argument('--runs', type=int, default=2, help='timed train steps in each step process (after one)')
  parser.add_argument('--skip_demo', action='store_true')
  parser.add_argument('--demo_steps', type=int, default=20)
  parser.add_argument('--demo_tau', type=int, default=10)
  parser.add_argument('--child', default=None, help=argparse.SUPPRESS)
  common.add_common_flags(parser)
  args = parser.parse_args(argv)
  if args.child:
    print('RESULT ' + json.dumps(step_child(args.child, args.runs)), flush=True)
    return []

  rows = []
  if not args.skip_demo:
    rows.append(demo_peak_rss(sys.executable, args.demo_steps, args.demo_tau))
    print(common.table(rows[-1:], ('what', 'peak_rss_gib', 'wall_s')), flush=True)
  for spec in filter(None, args.steps.split(',')):
    result = subprocess.run([sys.executable, os.path.abspath(__file__), f'--child={spec}', f'--runs={args.runs}'],
                            capture_output=True, text=True)
    lines = [l for l in result.stdout.splitlines() if l.startswith('RESULT ')]
    if result.returncode != 0 or not lines:
      raise RuntimeError(f'step process {spec} failed ({result.returncode}):\n{result.stderr[-3000:]}')
    rows.append(json.loads(lines[-1][len('RESULT '):]))
    print(common.table(rows[-1:], ('what', 'peak_rss_gib', 'train_state_gib', 'step_s')), flush=True)
  columns = ('what', 'peak_rss_gib', 'rss_after_imports_gib', 'params_gib', 'train_state_gib', 'xla_temp_gib',
             'step_s', 'wall_s')
  notes = ['peak_rss_gib: /usr/bin/time -v (demo) or VmHWM (step processes); rss_after_imports: Python + JAX + '
           'TF + seqio before any model; train_state: params + Adafactor state; xla_temp: temporaries of the '
           'compiled step (XLA memory analysis).']
  common.report('Memory: peak resident set', rows, common.machine_facts(), args.json, columns, notes)
  return rows


if __name__ == '__main__':
  main()
