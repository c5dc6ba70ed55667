r"""Continual pre-training from an SC or SpacTor checkpoint: SSR (with its curriculum) or SC (T5-cont).

  python -m ssr.continual --gin_file=gin/ssr/ssr.gin --gin.INIT_CHECKPOINT="'runs/t5'" \
      --gin.DATA_DIR="'runs/ssr-data'" --gin.MODEL_DIR="'runs/ssr'"
  python -m ssr.continual --gin_file=gin/ssr/sc_cont.gin --gin.INIT_CHECKPOINT="'runs/t5'" \
      --gin.DATA_DIR="'runs/ssr-data'" --gin.MODEL_DIR="'runs/sc-cont'"

The T5 weights (encoder, decoder, embedder; a SpacTor checkpoint's generator and RTD head are left out) come
from the newest step of INIT_CHECKPOINT; the optimizer state starts fresh. The loop is the project trainer's own
(spactor.trainer.train_loop, with its checkpoints, metrics and preemption handling) around other data, another
optimizer and schedule, so a restart continues exactly from the run's own newest checkpoint. Every evaluation
reports the validation loss on both objectives (SSR on the generated validation split, SC on the corpus), so runs
of either objective compare on the same numbers.
"""
import dataclasses
import functools
import json
import logging
import os
import sys
from typing import Any, Optional

import gin
import jax
import jax.numpy as jnp
import optax
import seqio

from spactor import checkpointing, flops, metrics_io, objectives, partitioning, stages
from spactor import config as config_lib
from spactor import model as model_lib
from spactor import preprocessors
from spactor import cli, input_pipeline, trainer
from spactor import vocab as vocab_lib
from ssr import curriculum as curriculum_lib
from ssr import params as params_lib
from ssr import records
from ssr import tasks as ssr_tasks  # registers gin configurables before gin parses
from ssr.tasks import spactor_tasks

log = logging.getLogger("ssr.continual")

OBJECTIVES = ("ssr", "sc", "distill")  # distill: DistilT5, infilling with the generator's fills as targets


@gin.configurable(module="ssr.continual")
@dataclasses.dataclass(frozen=True)
class ContinualConfig:
  """A continual pre-training run. Defaults are the paper's (Section 4.1) where it gives them and ours where it is
  silent (optimizer, decay, weight decay, z-loss, the curriculum's switch; docs/ssr.md lists which); gin/ssr/*.gin
  sets them all."""
  model_dir: str
  init_checkpoint: str
  objective: str = "ssr"
  data_dir: Optional[str] = None  # ssr.generate output; needed for SSR training and SSR validation
  init_step: Optional[int] = None  # None: the newest step of init_checkpoint
  corpus: str = "sotu"
  curriculum: str = "loss_length"  # ssr.curriculum.MODES
  num_groups: int = 5
  curriculum_switch: float = 0.5  # ours: each switch window, as a fraction of the smaller neighbouring share
  curriculum_on_repeat: str = "warn"  # when the data cannot fill the run without repeats: 'warn' or 'stop'
  curriculum_shuffle_buffer: int = 10_000
  total_steps: int = 100_000
  batch_size: int = 512
  inputs_length: int = 256
  ssr_targets_length: Optional[int] = None  # None: the longest target the generated data can hold
  learning_rate: float = 5e-5
  warmup_steps: int = 8000
  decay: str = "linear"  # ours: after warm-up 'linear' to 0 at total_steps (Hugging Face's default) or 'constant'
  optimizer: str = "adamw"  # ours: 'adamw' (Hugging Face's default; the paper names none) or 'adafactor'
  weight_decay: float = 0.0
  z_loss: float = 1e-4
  seed: int = 0
  log_every: int = 100
  eval_every: int = 5000
  eval_batches: int = 10
  checkpoint_every: int = 5000
  keep_checkpoints: int = 3
  num_partitions: int = 1

  def __post_init__(self):
    if self.objective not in OBJECTIVES:
      raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
    if self.objective in ("ssr", "distill") and not self.data_dir:
      raise ValueError(f"the {self.objective} objective needs DATA_DIR (the output of python -m ssr.generate)")
    if not self.model_dir or not self.init_checkpoint:
      raise ValueError("MODEL_DIR and INIT_CHECKPOINT must be set")
    if os.path.abspath(self.model_dir) == os.path.abspath(self.init_checkpoint):
      raise ValueError("MODEL_DIR must differ from INIT_CHECKPOINT (the start checkpoint is read, never written)")
    if self.ssr_targets_length is not None and self.ssr_targets_length <= 0:
      raise ValueError(f"ssr_targets_length must be positive, got {self.ssr_targets_length}")
    config_lib.require_positive_fields(self, "total_steps", "batch_size", "inputs_length", "log_every",
                                       "eval_every", "checkpoint_every", "keep_checkpoints", "num_groups",
                                       "num_partitions")
    if not 0.0 <= self.curriculum_switch <= 1.0 or self.curriculum_on_repeat not in curriculum_lib.ON_REPEAT:
      raise ValueError(f"curriculum_switch must be in [0, 1] and curriculum_on_repeat one of "
                       f"{curriculum_lib.ON_REPEAT}, got {self.curriculum_switch}, {self.curriculum_on_repeat!r}")
    if self.decay not in ("linear", "constant") or self.optimizer not in ("adamw", "adafactor"):
      raise ValueError(f"decay must be linear/constant and optimizer adamw/adafactor, got {self.decay!r}, "
                       f"{self.optimizer!r}")
    if self.warmup_steps < 0 or self.eval_batches < 0:
      raise ValueError("warmup_steps and eval_batches must be >= 0")


def learning_rate_schedule(config: ContinualConfig) -> optax.Schedule:
  """Linear warm-up from 0 to learning_rate over warmup_steps, then constant or linear decay to 0."""
  warmup = optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps)
  after = (optax.constant_schedule(config.learning_rate) if config.decay == "constant" else
           optax.linear_schedule(config.learning_rate, 0.0, max(config.total_steps - config.warmup_steps, 1)))
  return optax.join_schedules([warmup, after], [config.warmup_steps])


def make_optimizer(config: ContinualConfig) -> optax.GradientTransformation:
  schedule = learning_rate_schedule(config)
  if config.optimizer == "adamw":
    return optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=config.weight_decay)
  return optax.adafactor(schedule, decay_rate=0.8, clipping_threshold=1.0, multiply_by_parameter_scale=False,
                         momentum=None)


# --- input ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Objective:
  """One objective's data: the task, its lengths and whether its train split may be shuffled by SeqIO."""
  name: str
  task: str
  lengths: dict
  shuffle: bool


def objectives_of(config: ContinualConfig, vocab) -> dict[str, Objective]:
  """The SC objective, SSR's (when there is SSR data to train or validate on) and DistilT5's when it is trained."""
  out = {"sc": Objective("sc", spactor_tasks.sc_task_name(config.corpus),
                         {"inputs": config.inputs_length,
                          "targets": preprocessors.targets_length_for(config.inputs_length)}, shuffle=True)}
  examples = config.total_steps * config.batch_size  # what the run reads: the curriculum spans exactly this
  if config.data_dir and (config.objective == "ssr" or records.list_shards(config.data_dir, "validation")):
    if config.objective == "ssr":  # warns, or stops, before anything is compiled
      curriculum_lib.run_plan(config.data_dir, "train", config.curriculum, config.num_groups, examples,
                              config.curriculum_switch, config.curriculum_on_repeat)
    task = ssr_tasks.register_rewrite_task(
        config.data_dir, vocab, config.curriculum, config.num_groups, examples=examples,
        switch=config.curriculum_switch, on_repeat=config.curriculum_on_repeat,
        shuffle_buffer=config.curriculum_shuffle_buffer)
    targets = ssr_targets_length(config.data_dir, config.inputs_length)  # also checks the inputs length
    lengths = {"inputs": config.inputs_length, "targets": config.ssr_targets_length or targets}
    # The curriculum orders the data: SeqIO must not shuffle it.
    out["ssr"] = Objective("ssr", task, lengths, shuffle=False)
  if config.objective == "distill":
    curriculum_lib.run_plan(config.data_dir, "train", "none", 1, examples, on_repeat=config.curriculum_on_repeat)
    task = ssr_tasks.register_distill_task(config.data_dir, vocab, examples, config.curriculum_on_repeat,
                                           config.curriculum_shuffle_buffer)
    lengths = {"inputs": config.inputs_length, "targets": distill_targets_length(config.data_dir,
                                                                                 config.inputs_length)}
    out["distill"] = Objective("distill", task, lengths, shuffle=False)
  return out


def distill_targets_length(data_dir: str, inputs_length: int) -> int:
  """The longest DistilT5 target: the generator's decoder length (sentinels, fills, EOS) for this data."""
  ssr_targets_length(data_dir, inputs_length)  # checks the inputs length
  lengths = []
  for split in ("train", "validation"):
    path = os.path.join(data_dir, f"generate_config-{split}.json")
    if os.path.exists(path):
      with open(path) as f:
        lengths.append(json.load(f)["generate"]["decode_length"])
  raw = ssr_tasks.raw_length_for(inputs_length)
  return max(lengths) if lengths else ssr_tasks.decode_length_for(inputs_length, raw)


def ssr_targets_length(data_dir: str, inputs_length: int) -> int:
  """A targets length that holds every generated example, from the data's generate_config-*.json.

  Refuses data generated for longer inputs than INPUTS_LENGTH: SeqIO would cut them (and their markers) short.
  Without settings files, assumes data made for INPUTS_LENGTH with the default masking.
  """
  lengths = []
  for split in ("train", "validation"):
    path = os.path.join(data_dir, f"generate_config-{split}.json")
    if not os.path.exists(path):
      continue
    with open(path) as f:
      settings = json.load(f)
    made_for = settings["generate"]["inputs_length"]
    if made_for > inputs_length:
      raise ValueError(f"{data_dir} ({split}) was generated for inputs of {made_for} tokens, longer than "
                       f"INPUTS_LENGTH={inputs_length}; generate with --inputs_length={inputs_length}")
    lengths.append(ssr_tasks.targets_length_for(settings["raw_length"], settings["noise_density"]))
  return max(lengths) if lengths else ssr_tasks.targets_length_for(ssr_tasks.raw_length_for(inputs_length))


def make_dataset(config: ContinualConfig, objective: Objective, split: str, shuffle: bool, num_epochs=None):
  ds = seqio.get_dataset(
      objective.task, task_feature_lengths=objective.lengths, dataset_split=split, shuffle=shuffle,
      num_epochs=num_epochs, seed=config.seed, shard_info=seqio.ShardInfo(jax.process_index(), jax.process_count()),
      feature_converter=seqio.EncDecFeatureConverter(pack=False), use_cached=False)
  return ds.batch(config.batch_size // jax.process_count(), drop_remainder=True).prefetch(2)


# --- model, state and steps --------------------------------------------------------------------------------


def loss_fn(prefix: str, z_loss: float):
  """(module, params, batch, rng, enable_dropout) -> (loss, metrics): the decoder's CE on the targets.

  SSR and SC share the loss (spactor.stages.sc_loss); only the data differs.
  """
  return functools.partial(stages.sc_loss, z_loss=z_loss, prefix=prefix)


def init_state(module, tx, mesh, config: ContinualConfig):
  """Params from the start checkpoint, placed in their shardings; a fresh optimizer state; step 0."""
  tokens = jnp.ones((1, 8), jnp.int32)
  abstract = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), tokens, tokens, tokens))
  shardings = partitioning.param_shardings(abstract["params_axes"], mesh)
  params, step = params_lib.restore_t5_params(config.init_checkpoint, module, config.init_step)
  params = jax.device_put(params, shardings)
  state = checkpointing.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=jax.jit(tx.init)(params))
  return state, step


def validation_batches(config: ContinualConfig, objective_defs) -> dict[str, list]:
  """The first eval_batches batches (numpy) of each objective's validation split, read once and kept."""
  out = {}
  for name, objective in objective_defs.items():
    ds = make_dataset(config, objective, "validation", shuffle=False, num_epochs=1).take(config.eval_batches)
    out[name] = list(ds.as_numpy_iterator())
    if not out[name]:
      raise ValueError(f"the {name} validation data has less than one batch of {config.batch_size}; generate "
                       f"more validation examples or lower BATCH_SIZE")
  return out


def evaluate(batches, module, params, batch_sharding, rng) -> dict[str, float]:
  """Validation loss and accuracy of every objective, summed over its batches."""
  out = {}
  for name, objective_batches in batches.items():
    eval_fn = _eval_fn(module, name)
    totals = None
    for batch in objective_batches:
      metrics = eval_fn(params, trainer.to_global(batch, batch_sharding), rng)
      totals = metrics if totals is None else jax.tree.map(jnp.add, totals, metrics)
    out.update(objectives.summarize(jax.device_get(totals)))
  return out


@functools.lru_cache(maxsize=None)
def _eval_fn(module, prefix):
  return jax.jit(lambda params, batch, rng: stages.sc_loss(module, params, batch, rng, False, z_loss=0.0,
                                                             prefix=prefix)[1])


# --- the loop ---------------------------------------------------------------------------------------------


def data_plan(config: ContinualConfig) -> Optional[dict]:
  """What fixes the order of the training examples of an SSR or DistilT5 run (None for SC: it does not depend on
  the run's length). The curriculum spans TOTAL_STEPS x BATCH_SIZE examples, so both are part of it."""
  if config.objective == "sc":
    return None
  return {"objective": config.objective, "data_dir": os.path.abspath(config.data_dir),
          "curriculum": config.curriculum if config.objective == "ssr" else "none",
          "num_groups": config.num_groups if config.objective == "ssr" else 1,
          "examples": config.total_steps * config.batch_size, "switch": config.curriculum_switch,
          "shuffle_buffer": config.curriculum_shuffle_buffer, "seed": config.seed}


def check_data_plan(config: ContinualConfig) -> None:
  """Writes the run's data plan on its first start; refuses a restart whose plan differs (the data position in its
  checkpoints belongs to the first plan)."""
  plan = data_plan(config)
  if plan is None:
    return
  path = os.path.join(config.model_dir, "data_plan.json")
  if os.path.exists(path):
    with open(path) as f:
      previous = json.load(f)
    changed = sorted(k for k in set(plan) | set(previous) if plan.get(k) != previous.get(k))
    if changed:
      changes = ", ".join(f"{k}: {previous.get(k)!r} -> {plan.get(k)!r}" for k in changed)
      raise ValueError(
          f"{config.model_dir} was started with another data plan ({changes}); the curriculum spans TOTAL_STEPS x "
          f"BATCH_SIZE examples and its checkpoints hold a position in that order. Resume with the first settings, "
          f"or start another MODEL_DIR.")
    return
  if jax.process_index() == 0:
    os.makedirs(config.model_dir, exist_ok=True)
    records.write_json_atomic(path, json.dumps(plan, indent=2, sort_keys=True))


def run(config: ContinualConfig) -> dict[str, Any]:
  """Trains to total_steps (or until SIGTERM); returns and writes the run summary."""
  mesh = partitioning.make_mesh(config.num_partitions)
  batch_sharding = partitioning.batch_sharding(mesh)
  partitioning.check_batch_divides(config.batch_size, mesh)

  vocab = spactor_tasks.vocabulary(config.corpus)
  t5 = config_lib.preset(vocab_size=vocab_lib.model_vocab_size(vocab)).t5
  module = model_lib.SpacTor(t5)
  check_data_plan(config)
  objective_defs = objectives_of(config, vocab)
  objective = objective_defs[config.objective]
  train_iter = iter(make_dataset(config, objective, "train", shuffle=objective.shuffle))

  tx = make_optimizer(config)
  base_rng = jax.random.PRNGKey(config.seed)
  manager = checkpointing.make_manager(config.model_dir, keep=config.keep_checkpoints)
  with partitioning.logical_context(mesh):
    state, init_step = init_state(module, tx, mesh, config)
    template = trainer.abstract_state(state)
    restored = checkpointing.restore_latest(manager, lambda meta: template, train_iter)
  if restored is not None:
    state, _ = restored
    log.info("restored step %d from %s", int(state.step), manager.directory)
  else:
    log.info("starting from %s step %s (T5 weights; fresh optimizer)", config.init_checkpoint, init_step)

  lengths = flops.Lengths(inputs=objective.lengths["inputs"], targets=objective.lengths["targets"])
  stage = trainer.Stage(config.objective, module, loss_fn(config.objective, config.z_loss), None,
                        flops.sc_step_flops(t5, lengths, config.batch_size))
  eval_data = validation_batches(config, objective_defs) if config.eval_batches else {}
  eval_rng = trainer.rng_stream(base_rng, 'eval')
  writer = metrics_io.MetricsWriter(config.model_dir, start_step=int(state.step) if restored is not None else None)
  with partitioning.logical_context(mesh):
    state, timer, preempted = trainer.train_loop(
        state, stage_at=lambda step: stage, switch=None,
        cadence=trainer.Cadence.of(config),
        batch_size=config.batch_size, tx=tx, base_rng=base_rng,
        next_batch=input_pipeline.batch_reader(train_iter, batch_sharding), data_iterator=train_iter,
        batch_sharding=batch_sharding, manager=manager, writer=writer,
        evaluate=lambda stage, params: evaluate(eval_data, module, params, batch_sharding, eval_rng),
        log_extra=lambda stage, step: {"stage": stage.name}, eval_first=restored is None)
  writer.close()
  return write_summary(config, writer.path, timer, preempted=preempted)


def write_summary(config: ContinualConfig, metrics_path: str, timer, preempted: bool) -> dict[str, Any]:
  records = metrics_io.read_records(metrics_path) if os.path.exists(metrics_path) else []
  evals = [r for r in records if any(k.startswith("eval/") for k in r)]
  train = [r for r in records if "train/loss" in r]
  result = {
      "objective": config.objective, "curriculum": config.curriculum if config.objective == "ssr" else None,
      "curriculum_switch": config.curriculum_switch if config.objective == "ssr" else None,
      "init_checkpoint": config.init_checkpoint, "total_steps": config.total_steps, "preempted": preempted,
      "train_loss": train[-1]["train/loss"] if train else None,
      "start_eval": {k[5:]: v for k, v in evals[0].items() if k.startswith("eval/")} if evals else {},
      "final_eval": {k[5:]: v for k, v in evals[-1].items() if k.startswith("eval/")} if evals else {},
      "seqs_per_second": timer.seqs_per_second(config.objective, config.batch_size),
  }
  summary_path = os.path.join(config.model_dir, "summary.json")
  [result] = metrics_io.keep_measured([result], [metrics_io.read_json(summary_path) or {}])  # a rerun trains nothing
  if jax.process_index() == 0:
    final = result["final_eval"]
    print(f"\n{config.objective} continual pre-training in {config.model_dir}: {config.total_steps} steps, "
          f"validation " + ", ".join(f"{k}={v:.3f}" for k, v in sorted(final.items()) if k.endswith("_loss")),
          flush=True)
    metrics_io.write_json(summary_path, result)  # strict JSON: NaN becomes null
  return result


def main(argv: list[str]) -> None:
  cli.main(argv, ContinualConfig, run, user_errors=(*cli.USER_ERRORS, trainer.NonFiniteLossError), doc=__doc__)


if __name__ == "__main__":
  main(sys.argv[1:])
