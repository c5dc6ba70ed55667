r"""The comparison report of several pre-training runs (SC baseline, SpacTor at several τ, seeds): the paper's
Figure 5 (validation L_SC on the clean inputs against cumulative training FLOPs and against steps, τ marked),
the FLOPs and steps each run needs to reach the baseline's final validation loss and the saving, with the spread
over seeds, downstream results, Figure 4b with Appendix B's regression, and Section 3.2's stage-1 diagnostics.

  python -m spactor.report runs/sc_baseline runs/spactor_tau200 --out runs/report
  python -m spactor.report 'SC=runs/sc_s0' 'SC=runs/sc_s1' 'SpacTor=runs/t_s0' 'SpacTor=runs/t_s1' --out DIR
  python -m spactor.report gs://B/spactor-base/sc_baseline gs://B/spactor-base/tau120000 --out DIR \
      --t5x_size base --t5x_batch_size 2048

A RUN_DIR is a spactor.train model_dir (metrics.jsonl, summary.json) or a t5x run (TensorBoard event files, local
or gs://; a launch_tpu.sh experiment dir tau<τ>/ with stage1/ and stage2/ is one run): spactor.run_records.
`LABEL=RUN_DIR` groups runs under a label (the seeds of one setting); without it the label says τ. The baseline
is the label of the runs with τ = 0 unless --baseline names one. Writes into --out: report.md, report.json,
val_sc_vs_flops.png, val_sc_vs_steps.png, and when they apply sc_gap.png (Figure 4b) and stage1_diagnostics.png.
The crossing rule (linear interpolation between evaluations) is in spactor/report_tables.py.
--downstream FILE adds fine-tuning results from a JSON {RUN_DIR or LABEL: {task: {metric: value}}} to those found
in the runs' sub-directories (spactor.finetune's summary.json).
"""
import argparse
import json
import os
import sys
from typing import Any, Optional

from spactor import cli, metrics_io, report_tables, run_records
from spactor.errors import UsageError

FIGURES = {'flops': 'val_sc_vs_flops.png', 'steps': 'val_sc_vs_steps.png', 'gap': 'sc_gap.png',
           'stage1': 'stage1_diagnostics.png'}


# --- reading ----------------------------------------------------------------------------------------------------


def load_runs(arguments: list[str], t5x_shape: run_records.T5xShape) -> list[run_records.Run]:
  runs = []
  for argument in arguments:
    label, path = run_records.split_label(argument)
    if not path.startswith('gs://') and not os.path.isdir(path):
      raise UsageError(f'run directory {path!r} does not exist (give spactor.train or t5x model dirs)')
    runs.append(run_records.read_run(path, label, t5x_shape))
  return runs


def add_downstream(runs: list[run_records.Run], path: Optional[str]) -> None:
  """Merges a --downstream JSON ({RUN_DIR or LABEL: {task: {metric: value}}}) into the runs' results."""
  if not path:
    return
  try:
    with open(path) as f:
      results = json.load(f)
  except (OSError, ValueError) as e:
    raise UsageError(f'--downstream {path!r} cannot be read as JSON ({e})') from None
  if not isinstance(results, dict):
    raise UsageError(f'--downstream {path!r} must hold an object {{RUN_DIR or LABEL: {{task: {{metric: value}}}}}}')
  known = {r.path for r in runs} | {r.label for r in runs}
  unknown = sorted(set(results) - known)
  if unknown:
    raise UsageError(f'--downstream {path!r} names runs that are not in the report: {", ".join(unknown)}')
  for run in runs:
    for key in (run.label, run.path):
      for task, metrics in (results.get(key) or {}).items():
        run.downstream.setdefault(task, {}).update(metrics)


# --- figures ----------------------------------------------------------------------------------------------------


def _pyplot():
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  return plt


def _colors(labels):
  plt = _pyplot()
  cycle = plt.rcParams['axes.prop_cycle'].by_key()['color']
  return {label: cycle[i % len(cycle)] for i, label in enumerate(labels)}


def plot_curves(runs, table, png_path: str, x: str) -> str:
  """Figure 5: validation L_SC (clean) of every run against cumulative FLOPs (x='flops') or steps, τ marked."""
  plt = _pyplot()
  colors = _colors(dict.fromkeys(r.label for r in runs))
  fig, ax = plt.subplots(figsize=(7.5, 4.8))
  labelled = set()
  for run in runs:
    steps, losses = run.curve()
    if not steps:
      continue
    xs = [run.flops_at(s) / 1e15 for s in steps] if x == 'flops' else steps
    name = run.label if run.label not in labelled else None
    labelled.add(run.label)
    ax.plot(xs, losses, '-', color=colors[run.label], alpha=0.85, lw=1.4, label=name)
    if run.tau and steps[0] <= run.tau <= steps[-1]:
      loss_at_tau = _interpolate(steps, losses, run.tau)
      ax.plot(run.flops_at(run.tau) / 1e15 if x == 'flops' else run.tau, loss_at_tau, 'v', color=colors[run.label],
              markersize=8, markeredgecolor='black')
  ax.axhline(table['target_loss'], color='gray', ls='--', lw=1,
             label=f'baseline final loss {table["target_loss"]:.3f}')
  ax.plot([], [], 'v', color='white', markeredgecolor='black', label='τ (generator and RTD head dropped)')
  ax.set_xlabel('cumulative training PFLOPs (analytic)' if x == 'flops' else 'training steps')
  ax.set_ylabel('validation L_SC on X_c (clean)')
  _zoom(ax, runs)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return _save(plt, fig, png_path)


def _interpolate(steps, values, at):
  for (s0, v0), (s1, v1) in zip(zip(steps, values), zip(steps[1:], values[1:])):
    if s0 <= at <= s1:
      return v0 + (v1 - v0) * (at - s0) / (s1 - s0) if s1 > s0 else v1
  return values[-1]


def _zoom(ax, runs):
  """Leaves out the first evaluations' large losses (step 0 at ln|V|) so the ends of the curves can be read."""
  late = [v for r in runs for v in r.curve()[1][len(r.curve()[1]) // 4:]]
  if late:
    low, high = min(late), max(late)
    pad = 0.1 * (high - low) or 0.1
    ax.set_ylim(low - pad, high + 3 * pad)


def plot_gap(entries, png_path: str) -> str:
  """Figure 4b: SpacTor's validation L_SC on X_c minus the baseline's, and Appendix B's fitted trend."""
  plt = _pyplot()
  colors = _colors(dict.fromkeys(e['label'] for e in entries))
  fig, ax = plt.subplots(figsize=(7.5, 4.5))
  labelled = set()
  for entry in entries:
    if 'steps' not in entry:
      continue
    ax.plot(entry['steps'], entry['gaps'], 'o-', ms=3, color=colors[entry['label']], alpha=0.8,
            label=entry['label'] if entry['label'] not in labelled else None)
    labelled.add(entry['label'])
    trend = entry.get('trend')
    if trend:
      xs = [s for s in entry['steps'] if s >= trend['start_step']]
      ax.plot(xs, [trend['slope'] * s + trend['intercept'] for s in xs], ':', color=colors[entry['label']])
  ax.axhline(0, color='gray', lw=1)
  ax.set_xlabel('training steps')
  ax.set_ylabel('L_SC(SpacTor) - L_SC(baseline), validation, X_c')
  ax.set_title('Figure 4b; dotted: Appendix B regression', fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return _save(plt, fig, png_path)


def plot_stage1(entries, png_path: str) -> str:
  """Section 3.2 over training: generator accuracy, share of [M] replaced, RTD recall and precision."""
  plt = _pyplot()
  colors = _colors(dict.fromkeys(e['label'] for e in entries))
  names = run_records.STAGE_DIAGNOSTICS
  fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3.4))
  for ax, name in zip(axes, names):
    labelled = set()
    for entry in entries:
      curve = entry['curves'][name]
      ax.plot(curve['steps'], curve['values'], '-', color=colors[entry['label']], alpha=0.8,
              label=entry['label'] if entry['label'] not in labelled else None)
      labelled.add(entry['label'])
    ax.set_title(name, fontsize=9)
    ax.set_xlabel('steps')
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7)
  return _save(plt, fig, png_path, dpi=110)


def _save(plt, fig, png_path: str, dpi: int = 120) -> str:
  """Writes the figure and frees it (a study draws many)."""
  fig.tight_layout()
  fig.savefig(png_path, dpi=dpi)
  plt.close(fig)
  return png_path


# --- Markdown ---------------------------------------------------------------------------------------------------


def _num(value, fmt='{:.4g}') -> str:
  return '-' if value is None else fmt.format(value)


def _spread(spread: dict, fmt='{:.4g}', percent=False) -> str:
  if spread['mean'] is None:
    return '-'
  scale = 100.0 if percent else 1.0
  text = (fmt if not percent else '{:+.1f}%').format(spread['mean'] * scale)
  if spread['std'] is not None:
    text += ' ± ' + (fmt if not percent else '{:.1f}%').format(spread['std'] * scale)
  return text + (f' (n={spread["n"]})' if spread['n'] > 1 else '')


def _tau(tau) -> str:
  return '∞' if tau is None else str(tau)


def markdown(report: dict[str, Any]) -> str:
  table = report['comparison']
  lines = ['# Comparison report', '',
           f'Baseline: **{table["baseline"]}**; target: its final validation L_SC on X_c, '
           f'{table["target_loss"]:.4f} (mean over its seeds), reached by the baseline in {table["baseline_steps"]:g} '
           f'steps, {table["baseline_flops"] / 1e15:.4g} PFLOPs. Crossings interpolate linearly between evaluations '
           f'(spactor/report_tables.py); savings are 1 - run / baseline; ± is the standard deviation over seeds.', '',
           f'![validation L_SC against FLOPs]({FIGURES["flops"]})',
           f'![validation L_SC against steps]({FIGURES["steps"]})',
           '', '## Per setting (spread over seeds)', '',
           '| label | τ | seeds | reached | final L_SC | steps to target | PFLOPs to target | step saving | '
           'FLOPs saving |',
           '|---|---|---|---|---|---|---|---|---|']
  for g in table['groups']:
    flops = {k: (v / 1e15 if v is not None else None) for k, v in g['flops_to_target'].items() if k != 'n'}
    flops['n'] = g['flops_to_target']['n']
    seeds = ', '.join('-' if s is None else str(s) for s in g['seeds'])
    lines.append(f'| {g["label"]} | {_tau(g["tau"])} | {seeds} | '
                 f'{g["reached"]}/{g["runs"]} | {_spread(g["final_loss"])} | '
                 f'{_spread(g["steps_to_target"], "{:.1f}")} | '
                 f'{_spread(flops, "{:.4g}")} | {_spread(g["step_saving"], percent=True)} | '
                 f'{_spread(g["flops_saving"], percent=True)} |')
  lines += ['', '## Per run', '', '| label | seed | τ | last step | final L_SC | steps to target | PFLOPs to target | '
            'step saving | FLOPs saving |', '|---|---|---|---|---|---|---|---|---|']
  for r in table['runs']:
    pct = lambda v: '-' if v is None else f'{100 * v:+.1f}%'
    lines.append(f'| {r["label"]} | {_num(r["seed"], "{}")} | {_tau(r["tau"])} | {_num(r["last_step"], "{}")} | '
                 f'{_num(r["final_loss"], "{:.4f}")} | {_num(r["steps_to_target"], "{:.1f}")} | '
                 f'{_num(None if r["flops_to_target"] is None else r["flops_to_target"] / 1e15)} | '
                 f'{pct(r["step_saving"])} | {pct(r["flops_saving"])} |')
  lines += _downstream_markdown(report['downstream'])
  lines += _gap_markdown(report['figure_4b'])
  lines += _stage1_markdown(report['stage1_groups'])
  return '\n'.join(lines) + '\n'


def _downstream_markdown(downstream) -> list[str]:
  if not downstream['groups']:
    return ['', '## Downstream', '', 'No fine-tuning results in these runs.']
  metrics = sorted({m for g in downstream['groups'] for m in g['results']})
  lines = ['', '## Downstream (final evaluation of each fine-tuning run)', '',
           '| label | ' + ' | '.join(metrics) + ' |', '|---|' + '---|' * len(metrics)]
  for g in downstream['groups']:
    lines.append(f'| {g["label"]} | ' + ' | '.join(_spread(g['results'][m]) if m in g['results'] else '-'
                                                   for m in metrics) + ' |')
  return lines


def _gap_markdown(entries) -> list[str]:
  if not entries:
    return []
  lines = ['', '## Figure 4b and Appendix B', '', f'![Figure 4b]({FIGURES["gap"]})', '',
           'Gap = validation L_SC on X_c of the run minus its baseline (same seed) at common evaluation steps; '
           'trend: least squares of the gap on the step from the start step (Eq. 10), p-value of slope = 0 (Eq. 11).',
           '', '| label | seed | last gap | mean gap | trend from step | slope per 1K steps | p-value | points |',
           '|---|---|---|---|---|---|---|---|']
  for e in entries:
    if 'steps' not in e:
      lines.append(f'| {e["label"]} | {_num(e["seed"], "{}")} | {e["error"]} | | | | | |')
      continue
    trend = e.get('trend')
    mean_gap = sum(e['gaps']) / len(e['gaps'])
    cells = ([str(trend['start_step']), f'{trend["slope"] * 1000:+.4g}', f'{trend["p_value"]:.3g}',
              str(trend['num_points'])] if trend else [e.get('trend_error', '-'), '', '', ''])
    lines.append(f'| {e["label"]} | {_num(e["seed"], "{}")} | {e["gaps"][-1]:+.4f} | {mean_gap:+.4f} | '
                 + ' | '.join(cells) + ' |')
  return lines


def _stage1_markdown(groups) -> list[str]:
  if not groups:
    return []
  names = run_records.STAGE_DIAGNOSTICS
  lines = ['', '## Stage-1 diagnostics (Section 3.2), last evaluation of the hybrid stage', '',
           f'![stage-1 diagnostics]({FIGURES["stage1"]})', '',
           '| label | ' + ' | '.join(names) + ' |', '|---|' + '---|' * len(names)]
  for g in groups:
    lines.append(f'| {g["label"]} | ' + ' | '.join(_spread(g[n], '{:.3f}') for n in names) + ' |')
  return lines


# --- the report -------------------------------------------------------------------------------------------------


def build(runs, baseline: Optional[str] = None, trend_start: Optional[int] = None) -> dict[str, Any]:
  table = report_tables.comparison(runs, baseline)
  stage1 = report_tables.stage1_diagnostics(runs)
  return {'comparison': table, 'downstream': report_tables.downstream_table(runs),
          'figure_4b': report_tables.figure_4b(runs, table['baseline'], trend_start),
          'stage1': stage1, 'stage1_groups': report_tables.stage1_groups(stage1),
          'runs': [run_records.as_json(r) for r in runs]}


def write(runs, out_dir: str, baseline: Optional[str] = None, trend_start: Optional[int] = None) -> dict[str, Any]:
  """Builds the report and writes report.json, report.md and the figures into out_dir; returns the report."""
  report = build(runs, baseline, trend_start)
  os.makedirs(out_dir, exist_ok=True)
  plot_curves(runs, report['comparison'], os.path.join(out_dir, FIGURES['flops']), 'flops')
  plot_curves(runs, report['comparison'], os.path.join(out_dir, FIGURES['steps']), 'steps')
  if any('steps' in e for e in report['figure_4b']):
    plot_gap(report['figure_4b'], os.path.join(out_dir, FIGURES['gap']))
  if report['stage1']:
    plot_stage1(report['stage1'], os.path.join(out_dir, FIGURES['stage1']))
  metrics_io.write_json(os.path.join(out_dir, 'report.json'), report)
  with open(os.path.join(out_dir, 'report.md'), 'w') as f:
    f.write(markdown(report))
  return report


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m spactor.report', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('runs', nargs='+', metavar='[LABEL=]RUN_DIR')
  parser.add_argument('--out', required=True, help='output directory (created)')
  parser.add_argument('--baseline', help='label of the baseline runs (default: the runs with τ = 0)')
  parser.add_argument('--downstream', help='JSON of fine-tuning results {RUN_DIR or LABEL: {task: {metric: v}}}')
  parser.add_argument('--trend_start', type=int, help="Appendix B's first step (default: each run's τ, else 0)")
  parser.add_argument('--t5x_size', default='base', help='t5x runs: model size for the FLOPs count')
  parser.add_argument('--t5x_version', default='t5_1_0')
  parser.add_argument('--t5x_batch_size', type=int, default=2048)
  parser.add_argument('--t5x_inputs_length', type=int, default=512)
  parser.add_argument('--t5x_mlm_ratio', type=float, help="default: the size's (0.2 large, 0.15 otherwise)")
  parser.add_argument('--debug', action='store_true', help='tracebacks for bad input too')
  return parser.parse_args(argv)


def main(argv: list[str]) -> None:
  args = parse_args(argv)
  cli.configure_logging(args.debug)
  with cli.usage_errors_reported(args.debug):
    shape = run_records.T5xShape(args.t5x_size, args.t5x_version, args.t5x_batch_size, args.t5x_inputs_length,
                                 args.t5x_mlm_ratio)
    runs = load_runs(args.runs, shape)
    add_downstream(runs, args.downstream)
    report = write(runs, args.out, args.baseline, args.trend_start)
  print(markdown(report))
  print(f'written: {os.path.join(args.out, "report.md")}, report.json and the figures', flush=True)


if __name__ == '__main__':
  main(sys.argv[1:])
