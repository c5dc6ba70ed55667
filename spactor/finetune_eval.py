"""Evaluation of a fine-tuned model: seqio.Evaluator with our decoding, and the best checkpoint kept by a metric.

- `predict_fn` / `score_fn` are what seqio.Evaluator calls: predictions are greedy (or beam) decodes through the KV
  cache (spactor.beam_search), scores the log-likelihood of the targets (for tasks with score metrics, such as rank
  classification). The task's own postprocessor and metrics then run in SeqIO, as in t5x. Given the run's batch
  sharding, each eval batch is split over the data-parallel devices (every process reads the whole split, as
  seqio hands it to every process, and gets every row's result back), so evaluation runs data parallel like
  training instead of every device decoding every row.
- `BestCheckpoint`: an Orbax CheckpointManager whose best_fn keeps the params of the step with the best value of
  one metric, in `<model_dir>/best/checkpoints/<step>/state` (a run directory of its own, so every loader of project
  checkpoints reads it, and fine-tuning or evaluation can start from it).
"""
import functools
import logging
import os
from typing import Callable, Iterator, Optional

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp
import seqio

from spactor import beam_search
from spactor.errors import UsageError

log = logging.getLogger('spactor.finetune')

MODES = ('max', 'min')


def _batches(dataset, batch_size: int) -> Iterator[tuple[np.ndarray, dict]]:
  """(indices, features) numpy batches of an enumerated eval dataset, the last one short."""
  for indices, features in dataset.batch(batch_size).as_numpy_iterator():
    yield indices, features


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
  """x with zero rows appended up to `rows`, so every eval batch has one shape (one compilation)."""
  return np.pad(x, ((0, rows - x.shape[0]),) + ((0, 0),) * (x.ndim - 1))


def _to_devices(x: np.ndarray, sharding: Optional[jax.sharding.Sharding]):
  """A batch every process holds whole -> a global array split by `sharding` (None: left to jit, replicated)."""
  if sharding is None:
    return x
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def _to_host(x: jax.Array) -> np.ndarray:
  """Every row of a (possibly multi-process) global array, on every process."""
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


@functools.lru_cache(maxsize=None)  # one trace per model and setting, across runs in one process (tests, demo)
def _jitted_decode(module, max_length: int, beam_size: int, alpha: float):
  return jax.jit(functools.partial(beam_search.decode, module, max_length=max_length, beam_size=beam_size,
                                   alpha=alpha))


@functools.lru_cache(maxsize=None)
def _jitted_score(module):
  return jax.jit(functools.partial(target_log_likelihood, module))


def make_predict_fn(module, params_fn: Callable[[], object], batch_size: int, max_length: int, beam_size: int = 1,
                    alpha: float = 0.6, sharding: Optional[jax.sharding.Sharding] = None):
  """seqio's predict_fn: (index, decoded tokens) of every example of the eval dataset.

  Each row keeps its full length (0 after EOS, as t5x's): seqio stacks the predictions into one array, and its
  vocabularies decode up to EOS.

  params_fn() gives the params to evaluate at call time (the train loop's current ones); `sharding` (the run's
  batch sharding) splits each batch's rows over the data-parallel devices.
  """
  decode = _jitted_decode(module, max_length, beam_size, alpha)

  def predict_fn(dataset, model_feature_shapes=None):
    del model_feature_shapes
    params, out = params_fn(), []
    for indices, features in _batches(dataset, batch_size):
      inputs = _to_devices(_pad_rows(features['encoder_input_tokens'], batch_size), sharding)
      tokens = _to_host(decode(params, inputs))
      out.extend((int(i), row.tolist()) for i, row in zip(indices, tokens))
    return out

  return predict_fn


def target_log_likelihood(module, params, batch):
  """float32 [batch]: sum over target tokens of log p(token) under teacher forcing (seqio's score)."""
  logits = module.apply({'params': params}, batch['encoder_input_tokens'], batch['decoder_input_tokens'],
                        batch['decoder_target_tokens'], enable_dropout=False)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
  token = jnp.take_along_axis(log_probs, batch['decoder_target_tokens'][..., None], axis=-1)[..., 0]
  return jnp.sum(token * batch['decoder_loss_weights'].astype(jnp.float32), axis=-1)


def make_score_fn(module, params_fn: Callable[[], object], batch_size: int,
                  sharding: Optional[jax.sharding.Sharding] = None):
  """seqio's score_fn: (index, log-likelihood of the targets) of every example of the eval dataset."""
  score = _jitted_score(module)
  keys = ('encoder_input_tokens', 'decoder_input_tokens', 'decoder_target_tokens', 'decoder_loss_weights')

  def score_fn(dataset, model_feature_shapes=None):
    del model_feature_shapes
    params, out = params_fn(), []
    for indices, features in _batches(dataset, batch_size):
      scores = _to_host(score(params, {k: _to_devices(_pad_rows(features[k], batch_size), sharding) for k in keys}))
      out.extend((int(i), float(s)) for i, s in zip(indices, scores))
    return out

  return score_fn


def make_evaluator(task: str, split: str, lengths: dict, num_examples: Optional[int]) -> seqio.Evaluator:
  """A seqio.Evaluator of `task` (or mixture) on `split`, inputs/targets cut to `lengths`; refuses a task that
  has nothing to evaluate on that split.

  One per setting and process: building it reads and tokenizes the whole split, and the runs of one process (the
  demo's two starts, a resumed or evaluation-only run, tests) evaluate the same examples. It computes metrics
  synchronously, so it holds no thread to close.
  """
  return _evaluator(task, split, tuple(sorted(lengths.items())), num_examples)


@functools.lru_cache(maxsize=None)
def _evaluator(task: str, split: str, lengths: tuple, num_examples: Optional[int]) -> seqio.Evaluator:
  evaluator = seqio.Evaluator(task, feature_converter=seqio.EncDecFeatureConverter(pack=False), eval_split=split,
                              sequence_length=dict(lengths), num_examples=num_examples, async_compute_metrics=False)
  if not evaluator.eval_tasks:
    raise UsageError(f'{task!r} has no metrics on its {split!r} split (or no such split), so there is nothing to '
                     f'evaluate; pick a task with metrics or another EVAL_SPLIT')
  return evaluator


def flat_metrics(task_metrics: dict) -> dict[str, float]:
  """{'task/metric': value} of seqio's {task: {metric: value}}; only scalars (confusion matrices and text are
  left to seqio's loggers)."""
  out = {}
  for task, metrics in task_metrics.items():
    for name, value in metrics.items():
      value = getattr(value, 'value', value)  # seqio.metrics.Scalar
      if np.ndim(value) == 0 and isinstance(np.asarray(value).item(), (int, float)):
        out[f'{task}/{name}'] = float(value)
  return out


def evaluate(evaluator: seqio.Evaluator, step: int, predict_fn, score_fn) -> dict[str, float]:
  metrics, _ = evaluator.evaluate(compute_metrics=True, step=step, predict_fn=predict_fn, score_fn=score_fn)
  return flat_metrics(metrics.result())


def resolve_metric(name: str, available) -> str:
  """The key of `name` among the evaluated metrics: 'task/metric' as is, or a bare metric name one task has."""
  if name in available:
    return name
  matches = [k for k in available if k.split('/', 1)[-1] == name]
  if len(matches) != 1:
    raise UsageError(f'BEST_METRIC={name!r} is {"ambiguous" if matches else "not a metric of this evaluation"}; '
                     f'the metrics are {sorted(available)} (give one as task/metric)')
  return matches[0]


class BestCheckpoint:
  """Keeps the params of the evaluation with the best value of one metric (Orbax best_fn, max_to_keep=1)."""

  def __init__(self, model_dir: str, metric: str, mode: str = 'max'):
    if mode not in MODES:
      raise UsageError(f'BEST_MODE must be one of {MODES}, got {mode!r}')
    self.metric = metric
    self.directory = os.path.abspath(os.path.join(model_dir, 'best', 'checkpoints'))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1, best_fn=lambda metrics: metrics['value'], best_mode=mode,
        keep_checkpoints_without_metrics=False, create=True, enable_async_checkpointing=False)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_handlers={'state': ocp.StandardCheckpointHandler()})

  def forget_after(self, step: int) -> None:
    """Drops kept steps after `step`: a restarted run trains and evaluates them again."""
    for kept in self.manager.all_steps():
      if kept > step:
        self.manager.delete(kept)

  def offer(self, step: int, params, metrics: dict[str, float]) -> None:
    key = resolve_metric(self.metric, metrics)
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave({'params': params})),
                      metrics={'value': metrics[key]})
    self.manager.wait_until_finished()

  def best_step(self) -> Optional[int]:
    """The step of the kept checkpoint, or None before any evaluation."""
    return self.manager.best_step()

  def close(self) -> None:
    self.manager.close()
