r"""`make demo-downstream`: the `make demo` checkpoint and a from-scratch model fine-tuned alike, metrics side by side.

  python -m spactor.finetune_demo --gin_file=gin/finetune/demo.gin --gin.INIT_CHECKPOINT="'runs/demo'" \
      --gin.MODEL_DIR="'runs/demo-downstream'"

MODEL_DIR holds one fine-tuning run per start (`pretrained/` from INIT_CHECKPOINT, `scratch/` from a random
init), with the same settings, data order and budget; then the task's metrics of both (at the last step, and at
the best step by BEST_METRIC) are printed as a table and written to MODEL_DIR/results.json. Running it again
skips a finished run and resumes an interrupted one (spactor.finetune).
"""
import dataclasses
import os
import sys
from typing import Any, Optional

from spactor import cli, finetune, metrics_io
from spactor.errors import UsageError

STARTS = ('pretrained', 'scratch')


def finished_summary(config: finetune.FinetuneConfig) -> Optional[dict]:
  """The summary of a run that already reached total_steps with these settings, else None."""
  summary = metrics_io.read_json(os.path.join(config.model_dir, 'summary.json'))
  if not summary:
    return None
  done = (not summary['preempted'] and summary['total_steps'] == config.total_steps
          and summary['final_eval'].get('step') == config.total_steps)
  return summary if done else None


def run_configs(config: finetune.FinetuneConfig) -> dict[str, finetune.FinetuneConfig]:
  if not config.init_checkpoint:
    raise UsageError('INIT_CHECKPOINT must name the pre-trained run to compare with a from-scratch model '
                     '(make demo-downstream passes runs/demo)')
  return {start: dataclasses.replace(config, model_dir=os.path.join(config.model_dir, start),
                                     init_checkpoint=config.init_checkpoint if start == 'pretrained' else None)
          for start in STARTS}


def metrics_of(evaluation: dict) -> dict[str, float]:
  return {k: v for k, v in evaluation.items() if k != 'step'}


def results_table(results: dict[str, Any]) -> str:
  """One row per start: the final metrics and the best value of BEST_METRIC with its step."""
  names = sorted({k for run in results['runs'].values() for k in run['final']})
  header = ['start', 'steps'] + [n.split('/', 1)[-1] for n in names] + ['best (step)']
  rows = [header]
  for start, run in results['runs'].items():
    best = run['best']
    best_cell = (f'{best["value"]:.2f} ({best["step"]})' if best.get('value') is not None else '-')
    rows.append([start, str(results['total_steps'])] + [f'{run["final"].get(n, float("nan")):.2f}' for n in names]
                + [best_cell])
  widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
  lines = ['  '.join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
  lines.insert(1, '  '.join('-' * w for w in widths))
  return '\n'.join(lines)


def best_of(summary: dict, metric: Optional[str]) -> dict:
  best = summary.get('best_eval') or {}
  if not best or not metric:
    return {}
  key = next((k for k in best if k == metric or k.split('/', 1)[-1] == metric), None)
  return {'step': best['step'], 'metric': key, 'value': best.get(key)}


def run_demo(config: finetune.FinetuneConfig) -> dict[str, Any]:
  """Fine-tunes (or skips, when finished) both starts, then prints and writes the comparison."""
  summaries = {}
  for start, run_config in run_configs(config).items():
    summaries[start] = finished_summary(run_config) or finetune.run(run_config)
    if summaries[start]['preempted']:
      print(f'{start} run preempted; run the same command again to continue', flush=True)
      return {}
  results = {
      'task': config.task, 'eval_split': config.eval_split, 'total_steps': config.total_steps,
      'batch_size': config.batch_size, 'learning_rate': config.learning_rate, 'best_metric': config.best_metric,
      'runs': {start: {'init_checkpoint': s['init_checkpoint'], 'train_loss': s['train_loss'],
                       'first': metrics_of(s['first_eval']), 'final': metrics_of(s['final_eval']),
                       'best': best_of(s, config.best_metric)} for start, s in summaries.items()},
  }
  print(f'\n{config.task}: fine-tuned from {config.init_checkpoint} vs from scratch, {config.total_steps} steps of '
        f'batch {config.batch_size}, {config.eval_split} split\n{results_table(results)}', flush=True)
  metrics_io.write_json(os.path.join(config.model_dir, 'results.json'), results)
  return results


def main(argv: list[str]) -> None:
  cli.main(argv, finetune.FinetuneConfig, run_demo, doc=__doc__)


if __name__ == '__main__':
  main(sys.argv[1:])
