"""One pre-training run as the comparison report sees it: its validation curve, its cost, its τ, seed and results.

Two kinds of run directory are read:
- this project's trainer (spactor.train): `metrics.jsonl` (eval/* records with `cumulative_flops`, train records
  with each stage's `gflops_per_step`) and `summary.json` (τ, total steps, per-stage GFLOPs, seed);
- t5x runs (launch_tpu.sh): TensorBoard event files anywhere under the directory, local or `gs://` (tf.io.gfile).
  A τ experiment's `stage1/` holds the hybrid stage, `stage2/` (or a baseline's own directory) span corruption;
  validation scalars are those under a `training_eval/` directory; validation L_SC on the clean inputs is
  `sc_clean_loss` in stage 1 and `sc_loss` in SCModel runs (their inputs are clean). t5x logs no FLOPs: the report
  computes them analytically from the model size, batch and input length given to it (`T5xShape`).
Fine-tuning results (spactor.finetune's summary.json, in a sub-directory of the run) come with the run.
"""
import dataclasses
import math
import os
import re
from typing import Any, Optional

from spactor import diagnostics
from spactor.metrics_io import read_json

CLEAN_SC_LOSS = diagnostics.CLEAN_SC_LOSS
METRICS_FILE = 'metrics.jsonl'
STAGE_DIAGNOSTICS = ('gen_accuracy', 'replaced', 'rtd_recall', 'rtd_precision')  # the paper's Section 3.2
_EVENTS = 'events.out.tfevents'


@dataclasses.dataclass
class Run:
  """What the report needs of one run. evals: {step: {metric: value}} of the validation metrics ('eval/...')."""
  path: str
  label: str
  seed: Optional[int]
  tau: Optional[int]  # 0: the SC baseline; None: hybrid throughout (τ = ∞)
  total_steps: Optional[int]
  gflops_per_step: dict[str, float]  # per stage: 'hybrid', 'sc'
  evals: dict[int, dict[str, float]]
  train: dict[int, dict[str, float]] = dataclasses.field(default_factory=dict)
  downstream: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)  # task -> final metrics
  kind: str = 'spactor'
  settings: dict[str, Any] = dataclasses.field(default_factory=dict)  # summary.json's (λ1, λ2, normalization...)

  @property
  def hybrid_steps(self) -> float:
    return math.inf if self.tau is None else self.tau

  def flops_at(self, step: float) -> float:
    """Cumulative training FLOPs at a (possibly fractional) step: the hybrid stage's cost up to τ, SC's after."""
    hybrid = min(step, self.hybrid_steps)
    cost = hybrid * self.gflops_per_step.get('hybrid', math.nan) if hybrid > 0 else 0.0
    if step > hybrid:
      cost += (step - hybrid) * self.gflops_per_step.get('sc', math.nan)
    return cost * 1e9

  def curve(self, key: str = CLEAN_SC_LOSS) -> tuple[list[int], list[float]]:
    """(steps, values) of one validation metric, in step order."""
    points = sorted((s, m[key]) for s, m in self.evals.items() if key in m and math.isfinite(m[key]))
    return [s for s, _ in points], [v for _, v in points]


def default_label(tau: Optional[int]) -> str:
  if tau == 0:
    return 'SC baseline'
  return 'SpacTor(τ=∞)' if tau is None else f'SpacTor(τ={tau})'


def split_label(argument: str) -> tuple[Optional[str], str]:
  """'LABEL=DIR' -> (LABEL, DIR); a plain DIR (also gs://...) -> (None, DIR)."""
  label, sep, path = argument.partition('=')
  if sep and label and '/' not in label:
    return label, path
  return None, argument


def read_run(path: str, label: Optional[str] = None, t5x_shape: Optional['T5xShape'] = None) -> Run:
  """Reads a run directory of either kind; raises FileNotFoundError naming what is missing."""
  if os.path.exists(os.path.join(path, METRICS_FILE)):
    run = read_spactor_run(path)
  else:
    run = read_t5x_run(path, t5x_shape or T5xShape())
  if label:
    run.label = label
  run.downstream = read_downstream(path)
  return run


# --- this project's trainer -------------------------------------------------------------------------------------


def read_spactor_run(path: str) -> Run:
  records = diagnostics.read_metrics(path)
  summary = read_json(os.path.join(path, 'summary.json')) or {}
  evals, train, gflops = {}, {}, {}
  for r in records:
    scalars = {k: float(v) for k, v in r.items() if isinstance(v, (int, float))}
    if any(k.startswith('eval/') for k in r):
      evals.setdefault(int(r['step']), {}).update({k: v for k, v in scalars.items() if k.startswith('eval/')})
    if any(k.startswith('train/') for k in r):
      train.setdefault(int(r['step']), {}).update({k: v for k, v in scalars.items() if k.startswith('train/')})
      if 'gflops_per_step' in r and r.get('stage'):
        gflops[r['stage']] = float(r['gflops_per_step'])
  for row in summary.get('stages', []):
    if row.get('gflops_per_step') is not None:
      gflops[row['stage']] = float(row['gflops_per_step'])
  tau = summary['tau'] if 'tau' in summary else _tau_from_records(records, gflops)
  seed = summary.get('seed', _seed_from_name(path))
  return Run(path=path, label=default_label(tau), seed=seed, tau=tau, total_steps=summary.get('total_steps'),
             gflops_per_step=gflops, evals=evals, train=train, settings=summary.get('settings') or {})


def _tau_from_records(records: list[dict], gflops: dict[str, float]) -> Optional[int]:
  """τ of a run that has no summary.json yet (still running): 0 when it never had a hybrid stage, None (∞) when it
  has had no SC stage, else solved from an SC record's cumulative FLOPs = τ·hybrid + (step - τ)·sc."""
  stages = {r.get('stage') for r in records if r.get('stage')}
  if 'hybrid' not in stages:
    return 0
  if 'sc' not in stages:
    return None
  sc = next(r for r in records if r.get('stage') == 'sc' and 'cumulative_flops' in r)
  hybrid, plain = gflops['hybrid'] * 1e9, gflops['sc'] * 1e9
  return int(round((sc['cumulative_flops'] - plain * sc['step']) / (hybrid - plain)))


def _seed_from_name(path: str) -> Optional[int]:
  match = re.search(r'seed[_-]?(\d+)', os.path.basename(os.path.normpath(path)))
  return int(match.group(1)) if match else None


def read_downstream(path: str) -> dict[str, dict[str, float]]:
  """{task: final evaluation} of the spactor.finetune runs in the run's sub-directories (their summary.json)."""
  results = {}
  if not os.path.isdir(path):
    return results
  for name in sorted(os.listdir(path)):
    summary = read_json(os.path.join(path, name, 'summary.json'))
    if summary and 'task' in summary and summary.get('final_eval'):
      prefix = summary['task'] + '/'  # seqio.Evaluator names a task's metrics 'task/metric'
      results[summary['task']] = {k[len(prefix):] if k.startswith(prefix) else k: v
                                  for k, v in summary['final_eval'].items() if k != 'step' and v is not None}
  return results


# --- t5x runs (TensorBoard event files) -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class T5xShape:
  """What t5x's logs do not say and the FLOPs count needs (defaults: launch_tpu.sh's, SpacTor-Base on C4)."""
  size: str = 'base'
  version: str = 't5_1_0'
  batch_size: int = 2048
  inputs_length: int = 512
  mlm_ratio: Optional[float] = None  # None: the size's (0.2 for large, 0.15 otherwise)
  vocab_size: int = 32128  # T5's SentencePiece model and the [M] row

  def gflops_per_step(self) -> dict[str, float]:
    from spactor import config as config_lib, flops, span_lengths
    t5, generator, rtd_head = config_lib.preset(self.size, self.version, vocab_size=self.vocab_size)
    ratio = self.mlm_ratio if self.mlm_ratio is not None else (0.2 if self.size == 'large' else 0.15)
    targets = span_lengths.random_spans_helper(self.inputs_length, span_lengths.DEFAULT_NOISE_DENSITY,
                                               span_lengths.DEFAULT_MEAN_NOISE_SPAN_LENGTH)[1]
    lengths = flops.Lengths(inputs=self.inputs_length, targets=targets)
    k = span_lengths.max_mlm_positions(self.inputs_length, ratio)
    return {'hybrid': flops.hybrid_step_flops(t5, generator, rtd_head, lengths, self.batch_size, logits_tokens=k) / 1e9,
            'sc': flops.sc_step_flops(t5, lengths, self.batch_size) / 1e9}


def event_files(root: str) -> list[str]:
  """Every TensorBoard event file under root (local or gs://), in path order."""
  import tensorflow as tf
  found = []
  for directory, _, files in tf.io.gfile.walk(root):
    found.extend(os.path.join(directory, f) for f in files if _EVENTS in f)
  return sorted(found)


def read_scalars(event_file: str) -> dict[int, dict[str, float]]:
  """{step: {tag: value}} of the scalar summaries in one event file (TF2 tensors and TF1 simple values)."""
  import tensorflow as tf
  from tensorflow.core.util import event_pb2
  out = {}
  for serialized in tf.data.TFRecordDataset(event_file):
    event = event_pb2.Event.FromString(serialized.numpy())
    for value in event.summary.value:
      kind = value.WhichOneof('value')
      if kind == 'simple_value':
        scalar = float(value.simple_value)
      elif kind == 'tensor' and not value.tensor.tensor_shape.dim:
        scalar = float(tf.make_ndarray(value.tensor))
      else:
        continue
      out.setdefault(int(event.step), {})[value.tag] = scalar
  return out


def _t5x_stage(relative: str) -> str:
  return 'hybrid' if 'stage1' in relative.split('/') else 'sc'


def read_t5x_run(path: str, shape: T5xShape) -> Run:
  """A t5x model dir or a launch_tpu.sh experiment dir (tau<τ>/stage1, stage2; sc_baseline)."""
  files = event_files(path)
  if not files:
    raise FileNotFoundError(f'{path} holds neither a metrics.jsonl (spactor.train) nor TensorBoard event files '
                            f'(t5x): give a run directory')
  evals, train, last_hybrid_step = {}, {}, None
  for file in files:
    relative = os.path.relpath(file, path).replace(os.sep, '/')
    stage = _t5x_stage(relative)
    is_eval = 'training_eval/' in relative
    for step, tags in read_scalars(file).items():
      if stage == 'hybrid':
        last_hybrid_step = max(step, last_hybrid_step or 0)
      target = evals if is_eval else train
      prefix = 'eval/' if is_eval else 'train/'
      metrics = {prefix + tag.split('/')[-1] if is_eval else prefix + tag: v for tag, v in tags.items()}
      if is_eval and stage == 'sc' and 'eval/sc_loss' in metrics:  # SCModel's inputs are the clean ones
        metrics.setdefault(CLEAN_SC_LOSS, metrics['eval/sc_loss'])
      target.setdefault(step, {}).update(metrics)
  tau = _t5x_tau(path, last_hybrid_step)
  return Run(path=path, label=default_label(tau), seed=_seed_from_name(path), tau=tau,
             total_steps=max(list(evals) + list(train)) if evals or train else None,
             gflops_per_step=shape.gflops_per_step(), evals=evals, train=train, kind='t5x')


def _t5x_tau(path: str, last_hybrid_step: Optional[int]) -> Optional[int]:
  match = re.fullmatch(r'tau(\d+)', os.path.basename(os.path.normpath(path)))
  if match:
    return int(match.group(1))
  return 0 if last_hybrid_step is None else last_hybrid_step


def as_json(run: Run) -> dict[str, Any]:
  return {'path': run.path, 'label': run.label, 'seed': run.seed, 'tau': run.tau, 'total_steps': run.total_steps,
          'kind': run.kind, 'gflops_per_step': run.gflops_per_step, 'downstream': run.downstream,
          'settings': run.settings}
