r"""SpacTor pre-training: the hybrid objective for τ steps, then span corruption.

  python -m spactor.train --gin_file=gin/runs/demo.gin --gin.TAU=120 --gin.MODEL_DIR="'runs/x'"

Flags are shaped like t5x.train's (--gin_file, --gin.NAME=VALUE, --gin_search_paths; spactor.cli). `run` reads
top to bottom: mesh -> input -> model and optimizer -> restore or init -> loop -> summary. A restart of the same
command continues from the newest checkpoint exactly: the step, every RNG (folded from the seed and the step) and
the data iterator's position are in it. The core it wires (spactor.trainer) knows nothing of TensorFlow; the input
comes from spactor.input_pipeline.
"""
import logging
import os
import sys
from typing import Any

import jax
import numpy as np

from spactor import checkpoint_io, checkpointing, cli, input_pipeline, metrics_io, partitioning, tasks
from spactor import vocab as vocab_lib
from spactor.trainer import (Cadence, NonFiniteLossError, Stage, TrainConfig, VocabSizes, abstract_state,  # noqa: F401
                             batch_shapes, build_stages, compile_eval_step, cumulative_flops, init_state, rng_stream,
                             make_optimizer, sum_eval_metrics, switch_to_sc, train_loop, write_summary)

log = logging.getLogger('spactor.train')


def vocab_sizes(vocab) -> VocabSizes:
  return VocabSizes(model=vocab_lib.model_vocab_size(vocab), pieces=vocab.vocab_size - vocab.extra_ids)


def init_from_checkpoint(state, config: TrainConfig, t5, tx):
  """A new run's state with D and the shared embedder from config.init_checkpoint; fresh optimizer state."""
  loaded = checkpoint_io.load_params(config.init_checkpoint, t5, config.init_checkpoint_step)
  log.info('D and the embedder start from %s (%s%s)', config.init_checkpoint, loaded.format,
           '' if loaded.step is None else f' step {loaded.step}')
  params = checkpoint_io.replace_t5_params(state.params, loaded.params)
  return state.replace(params=params, opt_state=jax.jit(tx.init)(params))


def run(config: TrainConfig) -> dict[str, Any]:
  """Trains to config.total_steps (or until SIGTERM) and returns the run summary."""
  # Mesh.
  mesh = partitioning.make_mesh(config.num_partitions)
  batch_sharding = partitioning.batch_sharding(mesh)
  partitioning.check_batch_divides(config.batch_size, mesh)

  # Input.
  input_pipeline.check_preprocessor_settings(config)
  vocab = tasks.vocabulary(config.corpus)
  train_iter = iter(input_pipeline.make_dataset(config, 'train', shuffle=True))

  # Model and optimizer.
  stage_defs = build_stages(config, vocab_sizes(vocab))
  tx = make_optimizer(config)
  base_rng = jax.random.PRNGKey(config.seed)
  example = {k: np.zeros(shape, dtype) for k, (shape, dtype) in batch_shapes(config).items()}

  # Restore or init. The state is always initialised as stage 1 and switched, so that D's initial weights do not
  # depend on τ (runs with different τ start from the same discriminator).
  manager = checkpointing.make_manager(config.model_dir, keep=config.keep_checkpoints)
  init_rng = rng_stream(base_rng, 'init')
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
  if restored is None and config.init_checkpoint:
    with partitioning.logical_context(mesh):
      state = init_from_checkpoint(state, config, stage_defs['sc'].module.config, tx)

  eval_steps = {}
  eval_rng = rng_stream(base_rng, 'eval')

  def evaluate(stage: Stage, params) -> dict[str, float]:
    if config.eval_batches == 0:
      return {}
    if stage.name not in eval_steps:
      eval_steps[stage.name] = compile_eval_step(stage)
    metrics = sum_eval_metrics(eval_steps[stage.name], params,
                               input_pipeline.validation_batches(config, batch_sharding), eval_rng)
    if metrics is None:
      raise ValueError(f'the validation split of {config.corpus!r} has fewer than one batch of '
                       f'{config.batch_size} examples; lower BATCH_SIZE or set eval_batches=0')
    return metrics

  def switch(state, stage: Stage):  # the switch at τ
    log.info('step %d: switched to span corruption; generator and RTD head dropped', int(state.step))
    return switch_to_sc(state, tx)

  writer = metrics_io.MetricsWriter(config.model_dir, start_step=int(state.step) if restored is not None else None)
  with partitioning.logical_context(mesh):
    state, timer, preempted = train_loop(
        state, stage_at=lambda s: stage_defs[config.stage_at(s)], switch=switch, cadence=Cadence.of(config),
        batch_size=config.batch_size, tx=tx, base_rng=base_rng,
        next_batch=input_pipeline.batch_reader(train_iter, batch_sharding), data_iterator=train_iter,
        batch_sharding=batch_sharding, manager=manager, writer=writer, evaluate=evaluate,
        log_extra=lambda stage, s: {'stage': stage.name, 'cumulative_flops': cumulative_flops(config, stage_defs, s)},
        eval_first=int(state.step) == 0 and restored is None)
  writer.close()
  result = write_summary(config, stage_defs, timer, writer.path, preempted=preempted)
  if config.plot and jax.process_index() == 0 and not preempted:
    metrics_io.plot_run(writer.path, os.path.join(config.model_dir, 'validation_loss.png'), tau=config.tau)
  return result


def main(argv: list[str]) -> None:
  cli.main(argv, TrainConfig, run, user_errors=(*cli.USER_ERRORS, NonFiniteLossError), doc=__doc__)


if __name__ == '__main__':
  main(sys.argv[1:])
