"""The numbers of the comparison report: when each run reaches the baseline's final validation loss, at what cost,
the saving against the baseline, the spread over seeds, and the paper's diagnostics. Pure: no files, no plots.

The crossing rule (`crossing_step`): the target is the mean, over the baseline's seeds, of each baseline run's last
validation L_SC (clean). A run reaches it at the first evaluation whose loss is at or below the target; the step is
interpolated linearly between that evaluation and the one before it (loss linear in the step between two
evaluations); a run whose first evaluation is already at or below the target reaches it there. The FLOPs are the
run's cumulative training FLOPs at that (fractional) step: the hybrid stage's cost per step up to τ, SC's after.
A run that never gets there is "not reached" (None). Savings are 1 - run / baseline, where baseline is what the
baseline spent to get to its final loss: the mean over its seeds of its last evaluation's step and cumulative FLOPs
(a baseline run's own crossing of the mean target is listed too, but a noisy curve can cross early or never).
Spread: mean and sample standard deviation (ddof = 1) over the seeds of a label that reached the target.
"""
import dataclasses
import math
import statistics
from typing import Any, Optional

from spactor import diagnostics, run_records
from spactor.run_records import CLEAN_SC_LOSS, Run


def crossing_step(steps: list[int], losses: list[float], target: float) -> Optional[float]:
  """The (fractional) step at which the validation curve first reaches `target` (module docstring), or None."""
  for i, (step, loss) in enumerate(zip(steps, losses)):
    if loss <= target:
      if i == 0 or losses[i - 1] == loss:
        return float(step)
      prev_step, prev_loss = steps[i - 1], losses[i - 1]
      return prev_step + (prev_loss - target) / (prev_loss - loss) * (step - prev_step)
  return None


def final_loss(run: Run, key: str = CLEAN_SC_LOSS) -> Optional[float]:
  _, values = run.curve(key)
  return values[-1] if values else None


def group_runs(runs: list[Run]) -> dict[str, list[Run]]:
  """Runs by label, labels in the order they first appear."""
  groups: dict[str, list[Run]] = {}
  for run in runs:
    groups.setdefault(run.label, []).append(run)
  return groups


def baseline_label(groups: dict[str, list[Run]], requested: Optional[str] = None) -> str:
  """The requested label, else the first label whose runs are SC baselines (τ = 0)."""
  if requested is not None:
    if requested not in groups:
      raise ValueError(f'--baseline {requested!r} names no run label; the labels are: {", ".join(groups)}')
    return requested
  for label, members in groups.items():
    if all(run.tau == 0 for run in members):
      return label
  raise ValueError(f'no SC baseline among the runs (a run with τ = 0); give one, or name the baseline label '
                   f'with --baseline (labels: {", ".join(groups)})')


@dataclasses.dataclass(frozen=True)
class Spread:
  mean: Optional[float]
  std: Optional[float]  # None with fewer than 2 values
  n: int

  @classmethod
  def of(cls, values) -> 'Spread':
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
      return cls(None, None, 0)
    return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))

  def as_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def run_row(run: Run, target: float, baseline_steps: Optional[float], baseline_flops: Optional[float]) -> dict:
  steps, losses = run.curve()
  step = crossing_step(steps, losses, target)
  flops = run.flops_at(step) if step is not None else None
  saving = lambda mine, theirs: None if mine is None or not theirs else 1.0 - mine / theirs
  return {'label': run.label, 'seed': run.seed, 'tau': run.tau, 'path': run.path,
          'last_step': steps[-1] if steps else None, 'final_loss': losses[-1] if losses else None,
          'total_flops': run.flops_at(steps[-1]) if steps else None,
          'steps_to_target': step, 'flops_to_target': flops,
          'step_saving': saving(step, baseline_steps), 'flops_saving': saving(flops, baseline_flops)}


def comparison(runs: list[Run], baseline: Optional[str] = None) -> dict[str, Any]:
  """The report's table: a row per run and a row per label (spread over seeds), against the baseline."""
  groups = group_runs(runs)
  base = baseline_label(groups, baseline)
  finals = [final_loss(run) for run in groups[base]]
  if any(f is None for f in finals):
    raise ValueError(f'a baseline run ({base!r}) has no validation {CLEAN_SC_LOSS}: it cannot set the target')
  target = statistics.fmean(finals)
  base_rows = [run_row(run, target, None, None) for run in groups[base]]
  base_steps = Spread.of(r['last_step'] for r in base_rows).mean
  base_flops = Spread.of(r['total_flops'] for r in base_rows).mean
  rows = [run_row(run, target, base_steps, base_flops) for run in runs]
  summary = []
  for label, members in groups.items():
    mine = [r for r in rows if r['label'] == label]
    reached = [r for r in mine if r['steps_to_target'] is not None]
    summary.append({'label': label, 'seeds': [r['seed'] for r in mine], 'runs': len(mine), 'reached': len(reached),
                    'tau': members[0].tau if len({m.tau for m in members}) == 1 else 'mixed',
                    **{field: Spread.of(r[field] for r in mine).as_json()
                       for field in ('final_loss', 'total_flops', 'steps_to_target', 'flops_to_target',
                                     'step_saving', 'flops_saving')}})
  return {'baseline': base, 'target_loss': target, 'metric': CLEAN_SC_LOSS, 'baseline_steps': base_steps,
          'baseline_flops': base_flops, 'runs': rows, 'groups': summary}


# --- downstream -------------------------------------------------------------------------------------------------


def downstream_table(runs: list[Run]) -> dict[str, Any]:
  """Per run and per label (mean, std over seeds): the final fine-tuning metrics of every task."""
  rows = [{'label': r.label, 'seed': r.seed, 'path': r.path, 'results': r.downstream} for r in runs if r.downstream]
  groups = []
  for label, members in group_runs([r for r in runs if r.downstream]).items():
    metrics = sorted({(task, name) for r in members for task, values in r.downstream.items() for name in values})
    groups.append({'label': label, 'results': {
        f'{task}/{name}': Spread.of(r.downstream.get(task, {}).get(name) for r in members).as_json()
        for task, name in metrics}})
  return {'runs': rows, 'groups': groups}


# --- the paper's diagnostics ------------------------------------------------------------------------------------


def paired_baseline(run: Run, baselines: list[Run]) -> Run:
  """The baseline run of the same seed, else the first baseline run."""
  return next((b for b in baselines if b.seed is not None and b.seed == run.seed), baselines[0])


def _as_records(run: Run) -> list[dict]:
  return [{'step': step, **metrics} for step, metrics in sorted(run.evals.items())]


def figure_4b(runs: list[Run], baseline: str, trend_start: Optional[int] = None) -> list[dict[str, Any]]:
  """Figure 4b (SpacTor's validation L_SC on X_c minus its baseline's, along training) and Appendix B's regression
  of that gap on the step (spactor.diagnostics), per non-baseline run. trend_start None: the run's τ when it is
  finite and positive, else 0."""
  baselines = [r for r in runs if r.label == baseline]
  out = []
  for run in runs:
    if run.label == baseline:
      continue
    partner = paired_baseline(run, baselines)
    entry = {'label': run.label, 'seed': run.seed, 'baseline_seed': partner.seed, 'path': run.path}
    try:
      steps, gaps = diagnostics.sc_gap(_as_records(run), _as_records(partner))
    except ValueError as e:
      out.append({**entry, 'error': str(e)})
      continue
    entry.update(steps=[int(s) for s in steps], gaps=[float(g) for g in gaps])
    start = trend_start if trend_start is not None else (run.tau if run.tau else 0)
    try:
      entry['trend'] = dataclasses.asdict(diagnostics.gap_trend(steps, gaps, start))
    except ValueError as e:
      entry['trend_error'] = str(e)
    out.append(entry)
  return out


def stage1_diagnostics(runs: list[Run]) -> list[dict[str, Any]]:
  """Section 3.2 per run: generator accuracy, share of [M] positions replaced, RTD recall and precision (validation),
  over training and at the last evaluation of the hybrid stage."""
  out = []
  for run in runs:
    curves = {name: run.curve(f'eval/{name}') for name in run_records.STAGE_DIAGNOSTICS}
    if not any(steps for steps, _ in curves.values()):
      continue
    last = {name: values[-1] if values else None for name, (_, values) in curves.items()}
    last_step = max((steps[-1] for steps, _ in curves.values() if steps), default=None)
    out.append({'label': run.label, 'seed': run.seed, 'path': run.path, 'last_hybrid_step': last_step,
                'last': last, 'curves': {name: {'steps': s, 'values': v} for name, (s, v) in curves.items()}})
  return out


def stage1_groups(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """The last hybrid evaluation's diagnostics per label, mean and spread over seeds."""
  labels = list(dict.fromkeys(e['label'] for e in entries))
  return [{'label': label, **{name: Spread.of(e['last'][name] for e in entries if e['label'] == label).as_json()
                              for name in run_records.STAGE_DIAGNOSTICS}} for label in labels]
