"""Figure 4b's gap and Appendix B's regression, from two runs' metrics.jsonl (spactor/diagnostics.py)."""
import json

import numpy as np
import pytest
from scipy import stats

from spactor import diagnostics


def write_run(path, evals, extra_records=()):
  """A metrics.jsonl with train records between the evaluations, as the trainer writes it."""
  path.mkdir(parents=True, exist_ok=True)
  with open(path / 'metrics.jsonl', 'w') as f:
    for step, value in evals.items():
      f.write(json.dumps({'step': step, 'train/loss': 1.0, 'stage': 'sc'}) + '\n')
      f.write(json.dumps({'step': step, 'eval/sc_clean_loss': value, 'stage': 'sc'}) + '\n')
    for record in extra_records:
      f.write(json.dumps(record) + '\n')
  return path


def test_gap_is_spactor_minus_baseline_at_common_steps(tmp_path):
  ours = write_run(tmp_path / 'ours', {0: 5.0, 100: 4.0, 200: 3.5, 300: 3.2})
  baseline = write_run(tmp_path / 'base', {0: 5.0, 100: 4.2, 200: 3.6, 250: 9.9},
                       [{'step': 200, 'eval/sc_clean_loss': 3.4}])  # a restarted run rewrote step 200
  steps, gaps = diagnostics.sc_gap(diagnostics.read_metrics(str(ours)), diagnostics.read_metrics(str(baseline)))
  np.testing.assert_array_equal(steps, [0, 100, 200])
  np.testing.assert_allclose(gaps, [0.0, -0.2, 0.1])


def test_regression_matches_least_squares_and_its_t_test(tmp_path):
  rng = np.random.default_rng(0)
  eval_steps = np.arange(0, 400_001, 10_000)
  gap = -0.05 - 6.9e-8 * eval_steps + rng.normal(0, 2e-3, eval_steps.size)
  ours = write_run(tmp_path / 'ours', {int(s): 3.0 + g for s, g in zip(eval_steps, gap)})
  baseline = write_run(tmp_path / 'base', {int(s): 3.0 for s in eval_steps})
  steps, gaps, trend = diagnostics.compare_runs(str(ours / 'metrics.jsonl'), str(baseline))
  keep = steps >= 120_000
  assert trend.num_points == keep.sum() == 29 and trend.start_step == 120_000
  # By hand: least squares, the slope's standard error and the two-sided t-test with n - 2 degrees of freedom.
  x, y = steps[keep].astype(float), gaps[keep]
  slope, intercept = np.polyfit(x, y, 1)
  residual = y - (slope * x + intercept)
  stderr = np.sqrt(residual @ residual / (x.size - 2) / np.sum((x - x.mean()) ** 2))
  assert trend.slope == pytest.approx(slope, rel=1e-9) and trend.intercept == pytest.approx(intercept, rel=1e-9)
  assert trend.slope_stderr == pytest.approx(stderr, rel=1e-6)
  assert trend.p_value == pytest.approx(2 * stats.t.sf(abs(slope / stderr), x.size - 2), rel=1e-6)
  assert trend.slope == pytest.approx(-6.9e-8, rel=0.2) and trend.p_value < 1e-6
  # A flat gap: no trend to find.
  flat = diagnostics.gap_trend(eval_steps, -0.05 + rng.normal(0, 2e-3, eval_steps.size))
  assert flat.p_value > 0.01


def test_bad_input_is_named(tmp_path):
  ours = write_run(tmp_path / 'ours', {0: 5.0, 100: 4.0})
  other = write_run(tmp_path / 'other', {50: 5.0})
  with pytest.raises(ValueError, match='no evaluation step in common'):
    diagnostics.compare_runs(str(ours), str(other))
  with pytest.raises(ValueError, match='at least 3 evaluations at or after step 120000'):
    diagnostics.compare_runs(str(ours), str(ours))
  with pytest.raises(FileNotFoundError, match='no metrics file'):
    diagnostics.read_metrics(str(tmp_path / 'missing'))
