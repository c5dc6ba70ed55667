r"""Fine-tuning and evaluation on a downstream SeqIO task, from any checkpoint this project reads or from scratch.

  python -m spactor.finetune --gin_file=gin/finetune/rt_polarity.gin --gin.MODEL_DIR="'runs/ft'" \
      --gin.INIT_CHECKPOINT="'runs/demo'"

INIT_CHECKPOINT is a spactor.train run (either stage: the generator and RTD head are not read), an ssr.continual
run, a `python -m spactor.convert` directory, a Hugging Face T5 or a t5x checkpoint (spactor.checkpoint_io), or
None for the from-scratch baseline. The paper's fine-tuning settings are the defaults: Adafactor at a constant LR
of 1e-3, dropout 0.1, batch 128, a fresh optimizer state. Every eval_every steps seqio.Evaluator runs the task's
metrics on greedy (or beam, BEAM_SIZE > 1) decodes through the KV cache; the metrics go to metrics.jsonl and
TensorBoard (eval/<task>/<metric>), and the params of the best evaluation by BEST_METRIC are kept in
MODEL_DIR/best (a run directory of its own; TOTAL_STEPS=0 with INIT_CHECKPOINT=MODEL_DIR/best evaluates it, on
another EVAL_SPLIT too). Resume and bad input behave as in pre-training: the loop, the
checkpoints and the command line are the trainer's (spactor.trainer, spactor.checkpointing, spactor.cli).
"""
import dataclasses
import logging
import os
import sys
from typing import Any, Optional

import gin
import jax
import jax.numpy as jnp
import optax
import seqio

from spactor import checkpoint_io, checkpointing, cli, flops, metrics_io, partitioning, stages, trainer
from spactor import config as config_lib
from spactor import downstream  # registers the downstream tasks  # noqa: F401
from spactor import finetune_eval, input_pipeline
from spactor import model as model_lib
from spactor import vocab as vocab_lib
from spactor.errors import UsageError

log = logging.getLogger('spactor.finetune')

STAGE = 'finetune'


@gin.configurable(module='spactor.finetune')
@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
  """A fine-tuning run. gin/finetune/*.gin binds it; the defaults are the paper's fine-tuning settings.

  model: the T5 (default: the gin-bound spactor.config.preset's, as gin/models/*.gin set it); its vocab_size is
  replaced by the task vocabulary's model size and its dropout by dropout_rate. inputs_length / targets_length
  cut the task's features (train and eval).
  best_metric: a metric of the evaluation ('accuracy', or 'task/metric' for a mixture); None keeps no best.
  total_steps = 0 evaluates the start checkpoint only (no training step, no checkpoint, no best copy).
  """
  model_dir: str
  task: str
  init_checkpoint: Optional[str]
  inputs_length: int
  targets_length: int
  init_step: Optional[int] = None  # None: the newest step of a run or t5x checkpoint
  model: config_lib.T5Config = dataclasses.field(default_factory=lambda: config_lib.preset().t5)
  total_steps: int = 10_000
  batch_size: int = 128
  learning_rate: float = 1e-3  # constant
  dropout_rate: float = 0.1
  z_loss: float = 1e-4
  seed: int = 0
  log_every: int = 100
  eval_every: int = 1000
  eval_split: str = 'validation'
  eval_examples: Optional[int] = None  # None: the whole split
  eval_batch_size: Optional[int] = None  # None: batch_size
  beam_size: int = 1  # 1: greedy
  length_penalty_alpha: float = 0.6  # T5's alpha for beam search
  best_metric: Optional[str] = 'accuracy'
  best_mode: str = 'max'
  checkpoint_every: int = 1000
  keep_checkpoints: int = 3
  num_partitions: int = 1

  def __post_init__(self):
    if not isinstance(self.total_steps, int) or self.total_steps < 0:
      raise UsageError(f'TOTAL_STEPS must be an int >= 0 (0 evaluates INIT_CHECKPOINT only), got '
                       f'{self.total_steps!r}')
    config_lib.require_positive_fields(self, 'batch_size', 'inputs_length', 'targets_length',
                                       'log_every', 'eval_every', 'checkpoint_every', 'keep_checkpoints',
                                       'num_partitions', 'beam_size')
    for name in ('eval_examples', 'eval_batch_size'):
      if getattr(self, name) is not None:
        config_lib.require_positive_fields(self, name)
    if not self.model_dir:
      raise UsageError('FinetuneConfig.model_dir (MODEL_DIR) must be set')
    if self.init_checkpoint and os.path.abspath(self.init_checkpoint) == os.path.abspath(self.model_dir):
      raise UsageError('MODEL_DIR must differ from INIT_CHECKPOINT (the start checkpoint is read, never written)')
    if not isinstance(self.model, config_lib.T5Config):
      raise UsageError(f'FinetuneConfig.model must be a T5Config (spactor.config.t5_preset()), got {self.model!r}')
    if not self.learning_rate > 0 or not 0.0 <= self.dropout_rate < 1.0 or self.length_penalty_alpha < 0:
      raise UsageError(f'LEARNING_RATE must be > 0, DROPOUT_RATE in [0, 1) and LENGTH_PENALTY_ALPHA >= 0; got '
                       f'{self.learning_rate!r}, {self.dropout_rate!r}, {self.length_penalty_alpha!r}')
    if self.best_mode not in finetune_eval.MODES:
      raise UsageError(f'BEST_MODE must be one of {finetune_eval.MODES}, got {self.best_mode!r}')

  @property
  def lengths(self) -> dict[str, int]:
    return {'inputs': self.inputs_length, 'targets': self.targets_length}


def make_optimizer(config: FinetuneConfig) -> optax.GradientTransformation:
  """T5's fine-tuning optimizer: Adafactor as in pre-training (decay 0.8, clipping 1.0) at a constant LR."""
  return optax.adafactor(config.learning_rate, decay_rate=0.8, clipping_threshold=1.0,
                         multiply_by_parameter_scale=True, momentum=None)


# --- task and input ---------------------------------------------------------------------------------------------


def task_vocabulary(task: str) -> seqio.Vocabulary:
  """The targets vocabulary of a registered task or mixture (every subtask must share it)."""
  try:
    provider = seqio.get_mixture_or_task(task)
  except ValueError:
    raise UsageError(f'TASK={task!r} is not a registered SeqIO task or mixture; the downstream tasks are '
                     f'{", ".join(downstream.task_names())} (spactor.downstream)') from None
  vocabularies = {id(t.output_features['targets'].vocabulary): t.output_features['targets'].vocabulary
                  for t in seqio.get_subtasks(provider)}
  if len(vocabularies) != 1:
    raise UsageError(f'the tasks of mixture {task!r} use {len(vocabularies)} vocabularies; fine-tune on one')
  return next(iter(vocabularies.values()))


def make_dataset(config: FinetuneConfig, split: str):
  """This process's rows of every training batch: the task's features, EncDecFeatureConverter, no packing."""
  ds = seqio.get_dataset(config.task, task_feature_lengths=config.lengths, dataset_split=split, shuffle=True,
                         num_epochs=None, seed=config.seed,
                         shard_info=seqio.ShardInfo(jax.process_index(), jax.process_count()),
                         feature_converter=seqio.EncDecFeatureConverter(pack=False), use_cached=False)
  return ds.batch(config.batch_size // jax.process_count(), drop_remainder=True).prefetch(2)


# --- model and state --------------------------------------------------------------------------------------------


def model_config(config: FinetuneConfig, vocab) -> config_lib.T5Config:
  return dataclasses.replace(config.model, vocab_size=vocab_lib.model_vocab_size(vocab),
                             dropout_rate=config.dropout_rate)


def make_stage(config: FinetuneConfig, t5: config_lib.T5Config) -> trainer.Stage:
  """Fine-tuning is one stage: the decoder's cross-entropy on the task's targets (the SC loss, other data)."""
  module = model_lib.SpacTor(t5)
  loss_fn = lambda module, params, batch, rng, enable_dropout=True: stages.sc_loss(
      module, params, batch, rng, enable_dropout, z_loss=config.z_loss, prefix='task')
  cost = flops.sc_step_flops(t5, flops.Lengths(inputs=config.inputs_length, targets=config.targets_length),
                             config.batch_size)
  return trainer.Stage(STAGE, module, loss_fn, None, cost)


def init_params(config: FinetuneConfig, module, mesh):
  """Params in their shardings: the start checkpoint's T5 (stage-1 heads not read), or a fresh init."""
  tokens = jnp.ones((1, 8), jnp.int32)
  init = lambda rng: module.init(rng, tokens, tokens, tokens)
  if config.init_checkpoint is None:
    rng = trainer.rng_stream(jax.random.PRNGKey(config.seed), 'init')
    variables, _ = partitioning.sharded_init(init, mesh, rng)
    return variables['params'], None
  loaded = checkpoint_io.load_params(config.init_checkpoint, module.config, config.init_step)
  shardings = partitioning.param_shardings(jax.eval_shape(init, jax.random.PRNGKey(0))['params_axes'], mesh)
  return jax.device_put(loaded.params, shardings), loaded


# --- the run ----------------------------------------------------------------------------------------------------


def run(config: FinetuneConfig) -> dict[str, Any]:
  """Fine-tunes to total_steps (or until SIGTERM), evaluating on the way; returns and writes the summary."""
  mesh = partitioning.make_mesh(config.num_partitions)
  batch_sharding = partitioning.batch_sharding(mesh)
  eval_batch = config.eval_batch_size or config.batch_size
  partitioning.check_batch_divides(config.batch_size, mesh)
  partitioning.check_batch_divides(eval_batch, mesh, 'FinetuneConfig.eval_batch_size')

  # Task, evaluation and input.
  vocab = task_vocabulary(config.task)
  evaluator = finetune_eval.make_evaluator(config.task, config.eval_split, config.lengths, config.eval_examples)
  train_iter = iter(make_dataset(config, 'train'))

  # Model, optimizer, state: restored from MODEL_DIR, else from INIT_CHECKPOINT or fresh (optimizer fresh).
  stage = make_stage(config, model_config(config, vocab))
  tx = make_optimizer(config)
  base_rng = jax.random.PRNGKey(config.seed)
  manager = checkpointing.make_manager(config.model_dir, keep=config.keep_checkpoints)
  with partitioning.logical_context(mesh):
    if manager.latest_step() is None:
      params, loaded = init_params(config, stage.module, mesh)
      state = checkpointing.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                       opt_state=jax.jit(tx.init)(params))
      restored = None
      log.info('starting from %s', f'{config.init_checkpoint} ({loaded.format}, step {loaded.step})'
               if loaded else 'scratch (random init)')
    else:  # the shapes and shardings of a fresh state are the restore template
      fresh, _ = init_params(dataclasses.replace(config, init_checkpoint=None), stage.module, mesh)
      template = trainer.abstract_state(checkpointing.TrainState(
          step=jnp.zeros((), jnp.int32), params=fresh, opt_state=jax.jit(tx.init)(fresh)))
      restored = checkpointing.restore_latest(manager, lambda meta: template, train_iter)
      state = restored[0]
      log.info('restored step %d from %s', int(state.step), manager.directory)
  start_step = int(state.step)

  best = finetune_eval.BestCheckpoint(config.model_dir, config.best_metric, config.best_mode) \
      if config.best_metric and config.total_steps else None  # an evaluation-only run writes no params
  if best:  # a restart evaluates the steps after its checkpoint again; a run that restored nothing, every step
    best.forget_after(start_step if restored is not None else -1)
  current = {'params': state.params, 'step': start_step}
  predict_fn = finetune_eval.make_predict_fn(stage.module, lambda: current['params'], eval_batch,
                                             config.targets_length, config.beam_size, config.length_penalty_alpha,
                                             sharding=batch_sharding)
  score_fn = finetune_eval.make_score_fn(stage.module, lambda: current['params'], eval_batch, sharding=batch_sharding)
  read_batch = input_pipeline.batch_reader(train_iter, batch_sharding)

  def next_batch():  # counts steps, so an evaluation knows its step
    current['step'] += 1
    return read_batch()

  def evaluate(stage, params) -> dict[str, float]:
    current['params'] = params
    metrics = finetune_eval.evaluate(evaluator, current['step'], predict_fn, score_fn)
    if best:
      best.offer(current['step'], params, metrics)
    return metrics

  writer = metrics_io.MetricsWriter(config.model_dir, start_step=start_step if restored is not None else None)
  with partitioning.logical_context(mesh):
    state, timer, preempted = trainer.train_loop(
        state, stage_at=lambda step: stage, switch=None, cadence=trainer.Cadence.of(config),
        batch_size=config.batch_size, tx=tx, base_rng=base_rng, next_batch=next_batch, data_iterator=train_iter,
        batch_sharding=batch_sharding, manager=manager, writer=writer, evaluate=evaluate,
        log_extra=lambda stage, step: {'stage': stage.name}, eval_first=restored is None)
  writer.close()
  result = write_summary(config, writer.path, best, timer, preempted)
  if best:
    best.close()
  return result


def eval_records(metrics_path: str) -> list[dict]:
  records = metrics_io.read_records(metrics_path) if os.path.exists(metrics_path) else []
  return [{'step': r['step'], **{k[len('eval/'):]: v for k, v in r.items() if k.startswith('eval/')}}
          for r in records if any(k.startswith('eval/') for k in r)]


def write_summary(config: FinetuneConfig, metrics_path: str, best, timer, preempted: bool) -> dict[str, Any]:
  """summary.json: the first, last and best evaluations and the last train loss; printed as a short table."""
  evals = eval_records(metrics_path)
  train = [r for r in metrics_io.read_records(metrics_path) if 'train/loss' in r] if evals else []
  best_step = best.best_step() if best else None
  result = {
      'task': config.task, 'init_checkpoint': config.init_checkpoint, 'total_steps': config.total_steps,
      'preempted': preempted, 'best_metric': config.best_metric, 'best_mode': config.best_mode,
      'train_loss': train[-1]['train/loss'] if train else None,
      'first_eval': evals[0] if evals else {}, 'final_eval': evals[-1] if evals else {},
      'best_eval': next((e for e in evals if e['step'] == best_step), {}),
      'best_checkpoint': best.directory if best_step is not None else None,
      'seqs_per_second': timer.seqs_per_second(STAGE, config.batch_size),
  }
  summary_path = os.path.join(config.model_dir, 'summary.json')
  [result] = metrics_io.keep_measured([result], [metrics_io.read_json(summary_path) or {}])  # a rerun trains nothing
  if jax.process_index() == 0:
    final = {k: v for k, v in result['final_eval'].items() if k != 'step'}
    print(f'\nfine-tuning {config.task} in {config.model_dir} from {config.init_checkpoint or "scratch"}: '
          f'{config.total_steps} steps{" - preempted" if preempted else ""}; final '
          + ', '.join(f'{k}={v:.4f}' for k, v in sorted(final.items()))
          + (f'; best at step {best_step}' if best_step is not None else ''), flush=True)
    metrics_io.write_json(summary_path, result)  # strict JSON: NaN becomes null
  return result


def main(argv: list[str]) -> None:
  cli.main(argv, FinetuneConfig, run, user_errors=cli.USER_ERRORS + (trainer.NonFiniteLossError,), doc=__doc__)


if __name__ == '__main__':
  main(sys.argv[1:])
