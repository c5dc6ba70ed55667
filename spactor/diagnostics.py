"""The paper's diagnostics of a SpacTor run against its SC baseline, from the two runs' metrics.jsonl.

- Figure 4b (`sc_gap`): along training, SpacTor's validation L_SC on the clean inputs X_c minus the baseline's, at
  the steps both runs evaluated. Below 0, the hybrid objective helps span corruption; a gap that grows again shows
  the noise of X̂_c holding D back (the paper's case for τ < ∞).
- Appendix B (`gap_trend`): least squares of that gap on the step from a start step on (the paper: 120K), and the
  two-sided p-value of H0: slope = 0 (Eq. 10-11; the paper reports β0 = -6.90e-5 with p = 0.01, its step unit
  unstated). Steps here are optimizer steps.

scipy.stats.linregress does the regression (its p-value is the t-test of Eq. 11). The comparison report
(spactor/report.py) reuses these functions.
"""
import dataclasses
import math
import os

import numpy as np
from scipy import stats

from spactor import metrics_io

CLEAN_SC_LOSS = 'eval/sc_clean_loss'  # validation L_SC on X_c: the hybrid stage, stage 2 and the baseline log it
PAPER_TREND_START = 120_000  # Appendix B: "the x variable is training steps starting from 120K"


def read_metrics(path: str) -> list[dict]:
  """The records of a metrics.jsonl (a run directory is accepted too)."""
  if os.path.isdir(path):
    path = os.path.join(path, 'metrics.jsonl')
  if not os.path.exists(path):
    raise FileNotFoundError(f'no metrics file at {path}: give a run directory or its metrics.jsonl')
  return metrics_io.read_records(path)  # null (not measured) reads as NaN, which series() leaves out


def series(records: list[dict], key: str = CLEAN_SC_LOSS) -> dict[int, float]:
  """{step: value} of one metric; a step written twice (a restarted run) keeps its last value."""
  return {int(r['step']): float(r[key]) for r in records if key in r and math.isfinite(float(r[key]))}


def sc_gap(spactor_records: list[dict], baseline_records: list[dict], key: str = CLEAN_SC_LOSS):
  """Figure 4b: (steps, SpacTor's value minus the baseline's) at the steps both runs evaluated, in step order."""
  ours, baseline = series(spactor_records, key), series(baseline_records, key)
  steps = sorted(set(ours) & set(baseline))
  if not steps:
    raise ValueError(f'the two runs have no evaluation step in common for {key!r} (SpacTor: {len(ours)} steps, '
                     f'baseline: {len(baseline)} steps); evaluate both with the same eval_every')
  return np.array(steps, np.int64), np.array([ours[s] - baseline[s] for s in steps], np.float64)


@dataclasses.dataclass(frozen=True)
class Trend:
  """y = slope·step + intercept over the points at or after start_step (Eq. 10), and H0: slope = 0 (Eq. 11)."""
  slope: float
  intercept: float
  p_value: float
  slope_stderr: float
  num_points: int
  start_step: int


def gap_trend(steps, gaps, start_step: int = PAPER_TREND_START) -> Trend:
  """Appendix B's regression of the gap on the step, from start_step on."""
  steps, gaps = np.asarray(steps, np.float64), np.asarray(gaps, np.float64)
  keep = steps >= start_step
  if keep.sum() < 3:
    raise ValueError(f'the regression needs at least 3 evaluations at or after step {start_step}, got '
                     f'{int(keep.sum())}; lower the start step or evaluate more often')
  fit = stats.linregress(steps[keep], gaps[keep])
  return Trend(slope=float(fit.slope), intercept=float(fit.intercept), p_value=float(fit.pvalue),
               slope_stderr=float(fit.stderr), num_points=int(keep.sum()), start_step=int(start_step))


def compare_runs(spactor_metrics: str, baseline_metrics: str, start_step: int = PAPER_TREND_START,
                 key: str = CLEAN_SC_LOSS):
  """Figure 4b and Appendix B from two runs (directories or metrics.jsonl paths): (steps, gaps, Trend)."""
  steps, gaps = sc_gap(read_metrics(spactor_metrics), read_metrics(baseline_metrics), key)
  return steps, gaps, gap_trend(steps, gaps, start_step)
