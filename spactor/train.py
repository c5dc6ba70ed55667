r"""SpacTor pre-training: the hybrid objective for τ steps, then span corruption.

  python -m spactor.train --gin_file=gin/runs/demo.gin --gin.TAU=120 --gin.MODEL_DIR="'runs/x'"

Flags are shaped like t5x.train's (--gin_file, --gin.NAME=VALUE, --gin_search_paths). The file reads top to
bottom: config -> mesh -> input -> model and optimizer -> restore or init -> steps -> loop. A restart of the same
command continues from the newest checkpoint exactly: the step, every RNG (folded from the seed and the step) and
the data iterator's position are in it.
"""
import dataclasses
import functools
import json
import logging
import math
import os
import signal
import sys
import tokenize
from typing import Any, Callable, Optional

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import seqio
import tensorflow as tf

from spactor import checkpointing, config as config_lib, feature_converters, flops, metrics_io
from spactor import model as model_lib, objectives, partitioning, preprocessors, stages, vocab as vocab_lib
import tasks  # registers the SeqIO tasks and the data gin configurables

log = logging.getLogger('spactor.train')


# --- configuration ----------------------------------------------------------------------------------------


@gin.configurable(module='spactor.train')
@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything a run needs besides the model preset (spactor.config.preset) and the data preprocessors.

  tau: steps of the hybrid objective before plain span corruption; 0 gives the SC baseline, None the hybrid
  objective throughout (the paper's τ = ∞).
  """
  model_dir: str
  total_steps: int
  tau: Optional[int]
  batch_size: int = 2048
  inputs_length: int = 512
  corpus: str = 'sotu'
  lambda1: float = 10.0
  lambda2: float = 10.0
  learning_rate: float = 1.0  # LR = learning_rate / sqrt(max(step, warmup_steps)) (Table 5)
  warmup_steps: int = 10_000
  z_loss: float = 1e-4
  seed: int = 0
  log_every: int = 100
  eval_every: int = 1000
  eval_batches: int = 10
  checkpoint_every: int = 1000
  keep_checkpoints: int = 3
  num_partitions: int = 1  # model-parallel ways; the rest of the devices are data-parallel
  data_shards: Optional[int] = None  # None: one per process; set it to keep the data order across host counts
  plot: bool = True

  def __post_init__(self):
    config_lib.require_positive_fields(self, 'total_steps', 'batch_size', 'inputs_length', 'log_every',
                                       'eval_every', 'checkpoint_every', 'keep_checkpoints', 'num_partitions',
                                       'warmup_steps')
    if self.data_shards is not None:
      config_lib.require_positive_fields(self, 'data_shards')
    if self.tau is not None:
      if not isinstance(self.tau, int) or self.tau < 0:
        raise ValueError(f'TAU must be a non-negative integer or None (hybrid throughout), got {self.tau!r}')
      if self.tau > self.total_steps:
        raise ValueError(f'TAU={self.tau} is larger than the run (total_steps={self.total_steps}); use '
                         f'TAU=None for the hybrid objective throughout')
    if not self.model_dir:
      raise ValueError('TrainConfig.model_dir (MODEL_DIR) must be set')
    stages.HybridWeights(self.lambda1, self.lambda2)  # validates λ1, λ2 >= 0
    if self.eval_batches < 0:
      raise ValueError(f'TrainConfig.eval_batches must be >= 0, got {self.eval_batches}')

  @property
  def hybrid_steps(self) -> int:
    return self.total_steps if self.tau is None else self.tau

  def stage_at(self, step: int) -> str:
    return 'hybrid' if step < self.hybrid_steps else 'sc'


def learning_rate_schedule(base: float, warmup_steps: int) -> Callable[[jax.Array], jax.Array]:
  """T5's inverse square root: base / sqrt(max(step, warmup)); constant over the warm-up."""
  return lambda step: base / jnp.sqrt(jnp.maximum(step.astype(jnp.float32), warmup_steps))


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
  """Adafactor as T5 (decay 0.8, update clipping 1.0, parameter-scale updates, no momentum)."""
  return optax.adafactor(learning_rate_schedule(config.learning_rate, config.warmup_steps), decay_rate=0.8,
                         clipping_threshold=1.0, multiply_by_parameter_scale=True, momentum=None)


# --- input ------------------------------------------------------------------------------------------------


def task_lengths(inputs_length: int) -> dict[str, int]:
  targets_length = preprocessors.targets_length_for(inputs_length)
  return {'inputs': inputs_length, 'targets': targets_length, 'inputs_clean': inputs_length,
          'mlm_mask': inputs_length}


def max_mlm_positions(inputs_length: int) -> int:
  """A static bound on the [M] positions of one example under the gin-bound MLM ratio (+1 for rounding)."""
  ratio = gin.get_bindings(preprocessors.mlm_mask).get('mlm_ratio', preprocessors.DEFAULT_MLM_RATIO)
  if not 0.0 <= ratio < 1.0:
    raise ValueError(f'MLM_RATIO (spactor.preprocessors.mlm_mask.mlm_ratio) must be in [0, 1), got {ratio!r}')
  return min(inputs_length, int(round(ratio * inputs_length)) + 1)


def process_shards(config: TrainConfig) -> tuple[range, int]:
  """The data shards this process reads, and how many there are in all.

  Shards, not processes, fix the data order: with data_shards set, a run gives the same global batches on any
  number of processes that divides it (and can be resumed on another number of hosts).
  """
  num_shards = config.data_shards or jax.process_count()
  if num_shards % jax.process_count() or config.batch_size % num_shards:
    raise ValueError(f'data_shards={num_shards} must be a multiple of the {jax.process_count()} processes and '
                     f'divide BATCH_SIZE={config.batch_size}')
  per_process = num_shards // jax.process_count()
  return range(jax.process_index() * per_process, (jax.process_index() + 1) * per_process), num_shards


def make_dataset(config: TrainConfig, split: str, shuffle: bool, num_epochs=None):
  """This process's rows of every global batch: batch_size / data_shards rows from each of its shards."""
  shard_ids, num_shards = process_shards(config)
  parts = [seqio.get_dataset(
      tasks.hybrid_task_name(config.corpus), task_feature_lengths=task_lengths(config.inputs_length),
      dataset_split=split, shuffle=shuffle, num_epochs=num_epochs, seed=config.seed,
      shard_info=seqio.ShardInfo(index, num_shards),
      feature_converter=feature_converters.SpacTorFeatureConverter(pack=False),
      use_cached=False).batch(config.batch_size // num_shards, drop_remainder=True) for index in shard_ids]
  if len(parts) > 1:
    parts = [tf.data.Dataset.zip(tuple(parts)).map(
        lambda *batches: {k: tf.concat([b[k] for b in batches], axis=0) for k in batches[0]})]
  return parts[0].prefetch(2)


def to_global(batch: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def next_batch(iterator, sharding):
  try:
    batch = next(iterator)
  except StopIteration:
    raise ValueError('the training data produced no batch: the corpus is empty or every document was '
                     'skipped (see the log for counts)') from None
  return to_global(jax.tree.map(lambda t: t.numpy(), batch), sharding)


# --- model and state ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Stage:
  """One stage: its module, its loss, its validation metrics and its cost."""
  name: str
  module: Any
  loss_fn: Callable
  eval_fn: Callable
  flops_per_step: float


def build_stages(config: TrainConfig, vocab) -> dict[str, Stage]:
  model_vocab = vocab_lib.model_vocab_size(vocab)
  t5, generator, rtd_head = config_lib.preset(vocab_size=model_vocab)
  weights = stages.HybridWeights(config.lambda1, config.lambda2)
  allowed = objectives.allowed_generator_ids(model_vocab, vocab.vocab_size - vocab.extra_ids)
  lengths = task_lengths(config.inputs_length)
  cost = flops.Lengths(inputs=lengths['inputs'], targets=lengths['targets'])
  k = max_mlm_positions(config.inputs_length)
  return {
      'hybrid': Stage(
          'hybrid', model_lib.SpacTor(t5, generator, rtd_head),
          functools.partial(stages.hybrid_loss, weights=weights, allowed_ids=allowed, z_loss=config.z_loss,
                            max_predictions=k),
          functools.partial(stages.hybrid_eval_metrics, weights=weights, allowed_ids=allowed, max_predictions=k),
          flops.hybrid_step_flops(t5, generator, rtd_head, cost, config.batch_size, logits_tokens=k)),
      'sc': Stage(
          'sc', model_lib.SpacTor(t5),
          lambda module, params, batch, rng, enable_dropout=True: stages.sc_loss(
              module, params, stages.clean_batch(batch), rng, enable_dropout, z_loss=config.z_loss),
          stages.sc_eval_metrics,
          flops.sc_step_flops(t5, cost, config.batch_size)),
  }


def init_state(stage: Stage, tx, rng, example_batch, mesh) -> checkpointing.TrainState:
  """Initializes params, each directly in its sharding from its logical axes, and the optimizer state."""
  def init_variables(rng):
    return stage.module.init(rng, example_batch['encoder_input_tokens'], example_batch['decoder_input_tokens'],
                             example_batch['decoder_target_tokens'], method=model_lib.SpacTor.init_all)

  variables, _ = partitioning.sharded_init(init_variables, mesh, rng)
  params = variables['params']
  return checkpointing.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=jax.jit(tx.init)(params))


def switch_to_sc(state: checkpointing.TrainState, tx) -> checkpointing.TrainState:
  """At τ: drop the generator, the RTD head and their optimizer slots; step and schedule go on."""
  params = stages.drop_stage_1_params(state.params)
  return state.replace(params=params, opt_state=checkpointing.carry_optimizer_state(state.opt_state, params, tx))


def abstract_state(state: checkpointing.TrainState):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


# --- steps -------------------------------------------------------------------------------------------------


def train_step(state, batch, *, module, loss_fn, tx, base_rng):
  """One optimizer step; the step's RNG is folded from the seed and the step number."""
  rng = jax.random.fold_in(base_rng, state.step)
  grad_fn = jax.value_and_grad(lambda p: loss_fn(module, p, batch, rng, True), has_aux=True)
  (loss, metrics), grads = grad_fn(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {**metrics, 'loss': loss, 'grad_norm': optax.tree.norm(grads)}
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def compile_train_step(stage: Stage, tx, base_rng, state_shardings, batch_sharding):
  step = functools.partial(train_step, module=stage.module, loss_fn=stage.loss_fn, tx=tx, base_rng=base_rng)
  return jax.jit(step, in_shardings=(state_shardings, batch_sharding), out_shardings=(state_shardings, None),
                 donate_argnums=0)


def compile_eval_step(stage: Stage):
  return jax.jit(functools.partial(stage.eval_fn, stage.module))


def evaluate(eval_step, params, config: TrainConfig, batch_sharding, rng) -> dict[str, float]:
  """Validation metrics over the first `eval_batches` batches of the validation split (same every time)."""
  if config.eval_batches == 0:
    return {}
  ds = make_dataset(config, 'validation', shuffle=False, num_epochs=1).take(config.eval_batches)
  totals = None
  for batch in ds:
    metrics = eval_step(params, to_global(jax.tree.map(lambda t: t.numpy(), batch), batch_sharding), rng)
    totals = metrics if totals is None else jax.tree.map(jnp.add, totals, metrics)
  if totals is None:
    raise ValueError(f'the validation split of {config.corpus!r} has fewer than one batch of '
                     f'{config.batch_size} examples; lower BATCH_SIZE or set eval_batches=0')
  # Weighted terms are per-batch means; summed over batches they mean nothing, and the losses are already here.
  return {k: v for k, v in objectives.summarize(jax.device_get(totals)).items() if not k.endswith('_term')}


class NonFiniteLossError(RuntimeError):
  pass


def check_finite(step: int, metrics: dict[str, float]) -> None:
  """Stops the run at the first non-finite loss, naming the step and every loss term."""
  if not math.isfinite(metrics['loss']):
    terms = {k: v for k, v in metrics.items() if 'loss' in k or k.endswith('_term')}
    raise NonFiniteLossError(
        f'non-finite loss at step {step}: {json.dumps(terms, sort_keys=True)}; the last good checkpoint is kept')


# --- the loop ---------------------------------------------------------------------------------------------


class PreemptionFlag:
  """SIGTERM asks the loop to finish the current step, save, and exit."""

  def __init__(self):
    self.requested = False
    signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    log.warning('SIGTERM received: finishing this step, saving a checkpoint and exiting')
    self.requested = True


@dataclasses.dataclass(frozen=True)
class Cadence:
  """When a training loop stops and when it logs, evaluates and checkpoints (in steps)."""
  total_steps: int
  log_every: int
  eval_every: int
  checkpoint_every: int

  def logs(self, step: int) -> bool:
    return step % self.log_every == 0 or step == self.total_steps

  def evaluates(self, step: int) -> bool:
    return step % self.eval_every == 0 or step == self.total_steps

  def checkpoints(self, step: int) -> bool:
    return step % self.checkpoint_every == 0 or step == self.total_steps

  @classmethod
  def of(cls, config) -> 'Cadence':
    """The cadence of a run config with the same field names (TrainConfig, ssr.continual.ContinualConfig)."""
    return cls(config.total_steps, config.log_every, config.eval_every, config.checkpoint_every)


def train_loop(state, *, stage_at: Callable[[int], Stage], switch: Callable, cadence: Cadence, batch_size: int,
               tx, base_rng, train_iter, batch_sharding, manager, writer, evaluate: Callable,
               log_extra: Callable[[Stage, int], dict], eval_first: bool):
  """Steps `state` to cadence.total_steps, or until SIGTERM; returns (state, throughput timer, preempted).

  stage_at(step) names each step's stage; where it changes, switch(state, new_stage) converts the state.
  evaluate(stage, params) gives validation metrics (written as eval/*). Metrics stay on the device between
  boundaries (log, eval, checkpoint, switch) so that dispatch runs ahead of the host; a step's first compilation
  is not counted as throughput. Every checkpoint holds the data iterator's position.
  """
  flag = PreemptionFlag()
  timer = metrics_io.Throughput()
  step = int(jax.device_get(state.step))
  stage = stage_at(step)
  compiled = {}
  pending = []  # device metrics of steps not yet pulled to the host

  def run_eval():
    metrics = evaluate(stage, state.params)
    if metrics:
      writer.write(step, {f'eval/{k}': v for k, v in metrics.items()}, extra=log_extra(stage, step))

  def flush() -> float:
    loss = float('nan')
    for s, m in jax.device_get(pending):
      m = objectives.summarize(m)
      check_finite(s, m)
      loss = m['loss']
      if cadence.logs(s):
        writer.write(s, {f'train/{k}': v for k, v in m.items()},
                     extra={**log_extra(stage, s), 'gflops_per_step': stage.flops_per_step / 1e9,
                            'seqs_per_second': timer.seqs_per_second(stage.name, batch_size)})
    pending.clear()
    return loss

  def at_boundary(s: int) -> bool:
    return (cadence.logs(s) or cadence.evaluates(s) or cadence.checkpoints(s) or stage_at(s).name != stage.name
            or flag.requested)

  progress = metrics_io.ProgressBar(cadence.total_steps, step)
  if eval_first:
    run_eval()
  while step < cadence.total_steps:
    if stage_at(step).name != stage.name:
      stage = stage_at(step)
      state = switch(state, stage)
    first_of_stage = stage.name not in compiled
    if first_of_stage:
      compiled[stage.name] = compile_train_step(stage, tx, base_rng, jax.tree.map(lambda x: x.sharding, state),
                                                batch_sharding)
    state, metrics = compiled[stage.name](state, next_batch(train_iter, batch_sharding))
    step += 1
    pending.append((step, metrics))
    if first_of_stage:  # compilation is not throughput
      jax.block_until_ready(state)
      timer.restart()
    else:
      timer.tick()
    if not at_boundary(step):
      continue
    jax.block_until_ready(state)
    timer.measure(stage.name)
    loss = flush()
    progress.update(step, stage.name, loss, timer.seqs_per_second(stage.name, batch_size))
    if cadence.evaluates(step):
      run_eval()
    if cadence.checkpoints(step) or flag.requested:
      checkpointing.save(manager, state, train_iter, {'stage': stage.name, 'step': step})
    if flag.requested:
      break
    timer.restart()
  progress.close()
  return state, timer, flag.requested


def run(config: TrainConfig) -> dict[str, Any]:
  """Trains to config.total_steps (or until SIGTERM) and returns the run summary."""
  # Mesh.
  mesh = partitioning.make_mesh(config.num_partitions)
  batch_sharding = partitioning.batch_sharding(mesh)
  for ways, what in ((mesh.shape['data'], 'data-parallel devices'), (jax.process_count(), 'processes')):
    if config.batch_size % ways:
      raise ValueError(f'BATCH_SIZE={config.batch_size} must be divisible by the {ways} {what}')

  # Input.
  vocab = tasks.vocabulary(config.corpus)
  train_iter = iter(make_dataset(config, 'train', shuffle=True))

  # Model and optimizer.
  stage_defs = build_stages(config, vocab)
  tx = make_optimizer(config)
  base_rng = jax.random.PRNGKey(config.seed)
  example = {k: np.zeros((config.batch_size,) + tuple(v.shape[1:]), v.dtype.as_numpy_dtype)
             for k, v in train_iter.element_spec.items()}

  # Restore or init. The state is always initialised as stage 1 and switched, so that D's initial weights do not
  # depend on τ (runs with different τ start from the same discriminator).
  manager = checkpointing.make_manager(config.model_dir, keep=config.keep_checkpoints)
  init_rng = jax.random.fold_in(base_rng, -1 % (2 ** 31))
  with partitioning.logical_context(mesh):
    state = init_state(stage_defs['hybrid'], tx, init_rng, example, mesh)
    sc_template = switch_to_sc(state, tx)
    templates = {'hybrid': abstract_state(state), 'sc': abstract_state(sc_template)}
    restored = checkpointing.restore_latest(manager, lambda meta: templates[meta['stage']], train_iter)
  if restored is not None:
    state, meta = restored
    log.info('restored step %d (%s stage) from %s', int(state.step), meta['stage'], manager.directory)
  elif config.stage_at(0) == 'sc':
    state = sc_template
  del sc_template

  eval_steps = {}

  def evaluate_stage(stage: Stage, params) -> dict[str, float]:
    if stage.name not in eval_steps:
      eval_steps[stage.name] = compile_eval_step(stage)
    return evaluate(eval_steps[stage.name], params, config, batch_sharding, jax.random.fold_in(base_rng, 2 ** 30))

  def switch(state, stage: Stage):  # the switch at τ
    log.info('step %d: switched to span corruption; generator and RTD head dropped', int(state.step))
    return switch_to_sc(state, tx)

  writer = metrics_io.MetricsWriter(config.model_dir, start_step=int(state.step))
  with partitioning.logical_context(mesh):
    state, timer, preempted = train_loop(
        state, stage_at=lambda s: stage_defs[config.stage_at(s)], switch=switch,
        cadence=Cadence.of(config),
        batch_size=config.batch_size, tx=tx, base_rng=base_rng, train_iter=train_iter,
        batch_sharding=batch_sharding, manager=manager, writer=writer, evaluate=evaluate_stage,
        log_extra=lambda stage, s: {'stage': stage.name, 'cumulative_flops': cumulative_flops(config, stage_defs, s)},
        eval_first=int(state.step) == 0 and restored is None)
  writer.close()
  result = write_summary(config, stage_defs, timer, writer.path, preempted=preempted)
  if config.plot and jax.process_index() == 0 and not preempted:
    metrics_io.plot_run(writer.path, os.path.join(config.model_dir, 'validation_loss.png'), tau=config.tau)
  return result


def write_summary(config: TrainConfig, stage_defs, timer, metrics_path: str, preempted: bool) -> dict[str, Any]:
  """Prints the per-stage table (steps, losses, seqs/s, FLOPs) and writes it to summary.json."""
  records = metrics_io.read_records(metrics_path) if os.path.exists(metrics_path) else []
  rows = []
  for name, steps in (('hybrid', config.hybrid_steps), ('sc', config.total_steps - config.hybrid_steps)):
    if steps == 0:
      continue
    rows.append({'stage': name, 'steps': steps, **metrics_io.stage_summary(records, name),
                 'seqs_per_second': timer.seqs_per_second(name, config.batch_size),
                 'gflops_per_step': stage_defs[name].flops_per_step / 1e9})
  result = {'tau': config.tau, 'total_steps': config.total_steps, 'preempted': preempted, 'stages': rows,
            'total_pflops': cumulative_flops(config, stage_defs, config.total_steps) / 1e15}
  if jax.process_index() == 0:
    table = metrics_io.summary_table(rows)
    print(f'\nSpacTor run in {config.model_dir} (tau={config.tau}, {config.total_steps} steps, '
          f'{result["total_pflops"]:.4f} PFLOPs){" - preempted" if preempted else ""}\n{table}', flush=True)
    tmp = os.path.join(config.model_dir, 'summary.json.tmp')
    with open(tmp, 'w') as f:
      json.dump(result, f, indent=2)
    os.replace(tmp, os.path.join(config.model_dir, 'summary.json'))
  return result


def cumulative_flops(config: TrainConfig, stage_defs: dict[str, Stage], step: int) -> float:
  hybrid = min(step, config.hybrid_steps)
  return hybrid * stage_defs['hybrid'].flops_per_step + (step - hybrid) * stage_defs['sc'].flops_per_step


# --- command line -----------------------------------------------------------------------------------------


def parse_flags(argv: list[str]) -> tuple[list[str], list[str], list[str], dict[str, Any]]:
  """Reads t5x-style flags: --gin_file (repeatable), --gin.NAME=VALUE, --gin_search_paths, multi-process flags."""
  files, bindings, search_paths, distributed = [], [], [], {}
  for arg in argv:
    if arg.startswith('--gin_file='):
      files.append(arg.split('=', 1)[1])
    elif arg.startswith('--gin.'):
      name, _, value = arg[len('--gin.'):].partition('=')
      if not value:
        raise SystemExit(f'error: --gin.{name} needs a value: --gin.{name}=VALUE')
      bindings.append(f'{name} = {value}')
    elif arg.startswith('--gin_bindings='):
      bindings.append(arg.split('=', 1)[1])
    elif arg.startswith('--gin_search_paths='):
      search_paths.extend(p for p in arg.split('=', 1)[1].split(',') if p)
    elif arg.split('=', 1)[0] in ('--coordinator_address', '--num_processes', '--process_id'):
      key, value = arg[2:].split('=', 1)
      distributed[key] = value if key == 'coordinator_address' else int(value)
    elif arg in ('-h', '--help'):
      print(__doc__)
      raise SystemExit(0)
    else:
      raise SystemExit(f'error: unknown flag {arg!r} (expected --gin_file=, --gin.NAME=VALUE, --gin_search_paths=, '
                       f'--coordinator_address=, --num_processes=, --process_id=)')
  if not files:
    raise SystemExit('error: give at least one --gin_file')
  return files, bindings, search_paths, distributed


def parse_gin(files, bindings, search_paths) -> None:
  repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  # Includes such as 'models/t5_1_0_base.gin' resolve in the project's gin/ (gin tries the paths in order).
  for path in [*search_paths, os.getcwd(), repo_root, os.path.join(repo_root, 'gin')]:
    gin.add_config_file_search_path(path)
  try:
    gin.parse_config_files_and_bindings(files, bindings, finalize_config=False)
  except (ValueError, KeyError, IOError, SyntaxError, tokenize.TokenError) as e:
    text = e.args[0] if isinstance(e, tokenize.TokenError) else str(e)  # its str() is an args tuple
    raise SystemExit(f'error in the gin configuration: {text} (gin files {files}, bindings {bindings})') from None


class _DropGinSearchMisses(logging.Filter):
  """gin logs an ERROR for every search path an include is not in, even when a later one has it."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith('Path not found:')


def main(argv: list[str]) -> None:
  logging.getLogger().addFilter(_DropGinSearchMisses())
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s')
  for noisy in ('absl', 'orbax', 'jax._src', 'tensorflow'):
    logging.getLogger(noisy).setLevel(logging.ERROR)
  files, bindings, search_paths, distributed = parse_flags(argv)
  if distributed:
    jax.distributed.initialize(**distributed)
  jax.config.update('jax_numpy_rank_promotion', 'raise')
  parse_gin(files, bindings, search_paths)
  try:
    config = TrainConfig()
  except (TypeError, ValueError) as e:
    raise SystemExit(f'error: {e}') from None
  try:
    run(config)
  except (NonFiniteLossError, ValueError, FileNotFoundError) as e:  # bad input, named by the message
    log.debug('the run stopped', exc_info=True)
    raise SystemExit(f'error: {e}') from None


if __name__ == '__main__':
  main(sys.argv[1:])
