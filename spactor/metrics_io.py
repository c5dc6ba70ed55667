"""What a run shows a person: metrics (JSON lines + TensorBoard), a progress bar, a summary table and a plot."""
import collections
import json
import logging
import math
import os
import sys
import time
from typing import Any, Optional

import jax

METRICS_FILE = 'metrics.jsonl'


def _is_chief() -> bool:
  return jax.process_index() == 0


class MetricsWriter:
  """Appends records to `metrics.jsonl` and TensorBoard scalars under `tb/`.

  On a restart from step N, records after N (steps that will be trained again) are dropped first, with an
  atomic rewrite, so the file always describes one uninterrupted run. `start_step=None` is a run that restored no
  checkpoint: it writes every record again (step 0's evaluation included), so none of an earlier attempt's
  records are kept. Create the writer only after the restore succeeded: a run that stops on a checkpoint it cannot
  use must leave the history as it is.
  """

  def __init__(self, model_dir: str, start_step: Optional[int] = None):
    self.path = os.path.join(model_dir, METRICS_FILE)
    self._tb = None
    if not _is_chief():
      return
    os.makedirs(model_dir, exist_ok=True)
    _truncate_after(self.path, start_step)
    try:
      import tensorflow as tf
    except ImportError:  # a bare accelerator image: metrics.jsonl only
      logging.getLogger(__name__).warning('TensorFlow is not installed: no TensorBoard logs, only %s', self.path)
      return
    self._tb = tf.summary.create_file_writer(os.path.join(model_dir, 'tb'))

  def write(self, step: int, scalars: dict[str, float], extra: Optional[dict[str, Any]] = None) -> None:
    if not _is_chief():
      return
    record = {'step': step, **(extra or {}), **scalars}
    with open(self.path, 'a') as f:
      f.write(_json_line(record))
    if self._tb is None:
      return
    import tensorflow as tf
    with self._tb.as_default(step=step):
      for name, value in {**scalars, **{k: v for k, v in (extra or {}).items() if isinstance(v, (int, float))}}.items():
        tf.summary.scalar(name, value)
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _truncate_after(path: str, step: Optional[int]) -> None:
  if not os.path.exists(path):
    return
  kept = [] if step is None else [line for line in read_records(path) if line['step'] <= step]
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.writelines(_json_line(r) for r in kept)
  os.replace(tmp, path)


def _json_line(record: dict[str, Any]) -> str:
  """One strict JSON line: a value not measured (NaN, e.g. the throughput at a stage's first step) is null."""
  return json.dumps(finite_or_none(record), allow_nan=False) + '\n'


def read_records(path: str) -> list[dict[str, Any]]:
  """The records of a metrics.jsonl; a null value reads back as NaN (a float, as readers of old files saw it)."""
  with open(path) as f:
    return [{k: float('nan') if v is None else v for k, v in json.loads(line).items()} for line in f if line.strip()]


# --- strict JSON files ------------------------------------------------------------------------------------


def finite_or_none(value):
  """The value with every NaN or infinity (nested in dicts and lists) replaced by None: strict JSON's null."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: finite_or_none(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [finite_or_none(v) for v in value]
  return value


def write_json(path: str, value: Any) -> None:
  """Writes `value` as strict JSON (no NaN: null instead), atomically (a temporary file renamed)."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(finite_or_none(value), f, indent=2, allow_nan=False)
  os.replace(tmp, path)


def read_json(path: str) -> Optional[Any]:
  """The JSON in `path`, or None when the file is missing or is not JSON."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def keep_measured(rows: list[dict[str, Any]], previous_rows: Optional[list[dict[str, Any]]],
                  fields: tuple = ('seqs_per_second',)) -> list[dict[str, Any]]:
  """`rows` where each field this invocation did not measure (NaN or None) keeps the value of the previous
  summary's row of the same 'stage': a rerun of a finished run trains no step and keeps the measured throughput."""
  before = {row.get('stage'): row for row in previous_rows or []}
  out = []
  for row in rows:
    row = dict(row)
    for field in fields:
      if finite_or_none(row.get(field)) is None and before.get(row.get('stage'), {}).get(field) is not None:
        row[field] = before[row.get('stage')][field]
    out.append(row)
  return out


class Throughput:
  """Wall time and steps per stage between measurements, leaving out compilation, evals and checkpoints."""

  def __init__(self):
    self._t0: Optional[float] = None
    self._steps = 0
    self.totals = collections.defaultdict(lambda: [0.0, 0])

  def restart(self) -> None:
    self._t0, self._steps = time.perf_counter(), 0

  def tick(self) -> None:
    self._steps += 1

  def measure(self, stage: str) -> None:
    if self._t0 is not None and self._steps:
      total = self.totals[stage]
      total[0] += time.perf_counter() - self._t0
      total[1] += self._steps
    self.restart()

  def seqs_per_second(self, stage: str, batch_size: int) -> float:
    seconds, steps = self.totals.get(stage, (0.0, 0))
    return batch_size * steps / seconds if seconds else float('nan')


class ProgressBar:
  """step / total, stage, loss and sequences per second on one line (process 0 only)."""

  def __init__(self, total: int, initial: int):
    self._bar = None
    if _is_chief():
      from tqdm import tqdm
      self._bar = tqdm(total=total, initial=initial, unit='step', dynamic_ncols=True, file=sys.stderr,
                       mininterval=1.0)

  def update(self, step: int, stage: str, loss: float, seqs_per_second: float) -> None:
    if self._bar is None:
      return
    self._bar.set_postfix_str(f'stage={stage} loss={loss:.3f} seqs/s={seqs_per_second:.1f}', refresh=False)
    self._bar.update(step - self._bar.n)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


# --- summary and plot -------------------------------------------------------------------------------------


# The paper's Section 3.2 diagnostics of stage 1 (validation): generator accuracy, share of [M] positions replaced,
# RTD recall and precision; (summary key, metric).
STAGE_1_DIAGNOSTICS = (('gen_acc', 'eval/gen_accuracy'), ('replaced', 'eval/replaced'),
                       ('rtd_recall', 'eval/rtd_recall'), ('rtd_prec', 'eval/rtd_precision'))


def stage_summary(records: list[dict[str, Any]], stage: str) -> dict[str, Any]:
  """The last train loss, the last validation L_SC (clean and noisy), the stage-1 diagnostics when the stage has
  them, and the step span of one stage."""
  train = [r for r in records if r.get('stage') == stage and 'train/loss' in r]
  evals = [r for r in records if r.get('stage') == stage and 'eval/sc_clean_loss' in r]
  if not train and not evals:
    return {}
  last_eval = evals[-1] if evals else {}
  return {
      'last_step': max(r['step'] for r in train + evals),
      'train_loss': train[-1]['train/loss'] if train else float('nan'),
      'val_sc_clean': last_eval.get('eval/sc_clean_loss', float('nan')),
      'val_sc_noisy': last_eval.get('eval/sc_loss', float('nan')),
      **{name: last_eval[key] for name, key in STAGE_1_DIAGNOSTICS if key in last_eval},
  }


def summary_table(rows: list[dict[str, Any]]) -> str:
  columns = [('stage', '{}'), ('steps', '{}'), ('train_loss', '{:.3f}'), ('val_sc_clean', '{:.3f}'),
             ('val_sc_noisy', '{:.3f}')] + [(name, '{:.3f}') for name, _ in STAGE_1_DIAGNOSTICS] + [
             ('seqs_per_second', '{:.1f}'), ('gflops_per_step', '{:.1f}')]
  cells = [[c for c, _ in columns]] + [[fmt.format(row.get(c, '')) if row.get(c) is not None else '-'
                                       for c, fmt in columns] for row in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
  lines = ['  '.join(cell.rjust(w) for cell, w in zip(r, widths)) for r in cells]
  lines.insert(1, '  '.join('-' * w for w in widths))
  return '\n'.join(lines)


def plot_run(metrics_path: str, png_path: str, tau: Optional[int], label: str = 'SpacTor') -> str:
  """Validation L_SC (clean X_c, and noisy X̂_c while the generator lives) against cumulative FLOPs."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  records = [r for r in read_records(metrics_path) if 'eval/sc_clean_loss' in r]
  fig, ax = plt.subplots(figsize=(7, 4.5))
  pflops = [r['cumulative_flops'] / 1e15 for r in records]
  ax.plot(pflops, [r['eval/sc_clean_loss'] for r in records], 'o-', label=f'{label}: L_SC on X_c (clean)')
  noisy = [(f, r['eval/sc_loss']) for f, r in zip(pflops, records) if 'eval/sc_loss' in r]
  if noisy:
    ax.plot(*zip(*noisy), 's--', alpha=0.7, label=f'{label}: L_SC on X̂_c (generator-filled)')
  if tau is not None and 0 < tau:
    at_tau = [f for f, r in zip(pflops, records) if r['step'] == tau]
    if at_tau:
      ax.axvline(at_tau[0], color='gray', linestyle=':', label=f'τ = {tau} (generator and RTD head dropped)')
  ax.set_xlabel('cumulative training PFLOPs (analytic)')
  ax.set_ylabel('validation span-corruption loss')
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(png_path, dpi=120)
  plt.close(fig)
  return png_path
