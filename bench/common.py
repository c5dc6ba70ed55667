"""Shared pieces of the benchmarks: timing, synthetic batches, the real train step, machine facts, tables.

Timings on a shared CPU are noisy. Every script therefore reports medians over several repetitions, and wherever
two things are compared it runs them interleaved (A, B, A, B, ...) in one process so that both see the same load:
the ratio of two such medians is robust, the absolute figures are not.
"""
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Optional, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)


# --- timing ------------------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
  return statistics.median(values) if values else float('nan')


def time_call(fn: Callable[[], Any]) -> float:
  """Seconds of one call; fn must block until its work is done."""
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def interleaved(fns: dict[str, Callable[[], Any]], reps: int, warmup: int = 1) -> dict[str, list[float]]:
  """Times each fn `reps` times, round-robin (a, b, a, b, ...) after `warmup` untimed rounds."""
  for _ in range(warmup):
    for fn in fns.values():
      fn()
  times = {name: [] for name in fns}
  for _ in range(reps):
    for name, fn in fns.items():
      times[name].append(time_call(fn))
  return times


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
  """Median of the per-round ratios (robust to load that drifts between rounds)."""
  return median([a / b for a, b in zip(numerator, denominator)])


# --- machine and versions ------------------------------------------------------------------------------------


def load_average() -> tuple[float, float, float]:
  try:
    return os.getloadavg()
  except OSError:
    return (float('nan'),) * 3


def cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown'


LOAD_AT_START = load_average()  # when the benchmark process started (this module is imported first)


def machine_facts(extra: Optional[dict] = None) -> dict[str, Any]:
  """What a reader needs to compare figures: date, CPU, cores, load, Python and library versions."""
  facts = {
      'date': datetime.date.today().isoformat(),
      'cpu': cpu_model(),
      'cores': os.cpu_count(),
      'load_average_1_5_15_at_start': [round(x, 2) for x in LOAD_AT_START],
      'load_average_1_5_15_at_end': [round(x, 2) for x in load_average()],
      'python': platform.python_version(),
  }
  from importlib import metadata
  for name in ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'seqio', 'tensorflow'):
    try:
      facts[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      pass
  facts.update(extra or {})
  return facts


# --- output ------------------------------------------------------------------------------------------------


def fmt(value: Any) -> str:
  if isinstance(value, float):
    if value != value:
      return 'n/a'
    if value == 0:
      return '0'
    if abs(value) >= 1000:
      return f'{value:,.0f}'
    if abs(value) >= 10:
      return f'{value:.1f}'
    if abs(value) >= 0.01:
      return f'{value:.3f}'
    return f'{value:.2e}'
  return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Optional[Sequence[str]] = None) -> str:
  """A Markdown table (pastes into docs/benchmarks.md as it is)."""
  if not rows:
    return '(no rows)'
  columns = list(columns or rows[0].keys())
  cells = [[fmt(row.get(c, '')) for c in columns] for row in rows]
  widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
  line = lambda values: '| ' + ' | '.join(v.ljust(w) for v, w in zip(values, widths)) + ' |'
  return '\n'.join([line(columns), line(['-' * w for w in widths])] + [line(r) for r in cells])


def report(title: str, rows: Sequence[dict[str, Any]], facts: dict[str, Any], json_path: Optional[str] = None,
           columns: Optional[Sequence[str]] = None, notes: Sequence[str] = ()) -> None:
  """Prints the figures as one table (with the machine facts and notes under it); optionally writes JSON."""
  print(f'\n## {title}\n')
  print(table(rows, columns))
  print()
  for note in notes:
    print(f'- {note}')
  print(f'- machine: {json.dumps(facts, sort_keys=True)}', flush=True)
  if json_path:
    write_json(json_path, title, rows, facts, notes)


def write_json(path: str, title: str, rows: Sequence[dict[str, Any]], facts: Optional[dict] = None,
               notes: Sequence[str] = ()) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w') as f:
    json.dump({'title': title, 'rows': list(rows), 'facts': facts or {}, 'notes': list(notes)}, f, indent=2,
              default=str)


def add_common_flags(parser) -> None:
  parser.add_argument('--json', default=None, help='also write the figures to this JSON file')


# --- the real train step on synthetic batches ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SyntheticVocab:
  """Stands in for a seqio vocabulary where only its sizes matter (pad 0, EOS 1, UNK 2, sentinels at the top).

  vocab_size 32100 with 100 extra ids gives the public T5 model vocabulary, 32128.
  """
  vocab_size: int = 32100
  extra_ids: int = 100
  pad_id: int = 0
  eos_id: int = 1
  unk_id: int = 2

  @property
  def model_vocab_size(self) -> int:
    """Embedding rows, as spactor.vocab.model_vocab_size: vocab_size + 1 ([M]) rounded up to a multiple of 128."""
    return -(-(self.vocab_size + 1) // 128) * 128

  @property
  def mask_id(self) -> int:
    """[M], as spactor.vocab.mask_id: one past the last sentinel."""
    return self.vocab_size


# The sizes of the embedded SentencePiece vocabulary (4,000 pieces + 100 sentinels; model vocab 4224). A step
# benchmark needs only a vocabulary's sizes (its batches are synthetic), so it never loads the real one: SeqIO and
# TensorFlow stay out of the process, as on an accelerator image without them.
EMBEDDED_VOCAB = SyntheticVocab(vocab_size=4100)


def sotu_or_synthetic_vocab(model_vocab: Optional[int]) -> SyntheticVocab:
  """The embedded vocabulary's sizes when model_vocab is None, else a synthetic vocabulary whose model vocab is
  `model_vocab` (a multiple of 128, e.g. 32128 as public T5)."""
  if model_vocab is None:
    return EMBEDDED_VOCAB
  if model_vocab % 128:
    raise ValueError(f'model vocab {model_vocab} must be a multiple of 128')
  return SyntheticVocab(vocab_size=model_vocab - 28)


def synthetic_batch(batch_size: int, inputs_length: int, targets_length: int, vocab, mask_id: int,
                    mlm_ratio: float = 0.15, seed: int = 0) -> dict:
  """Model features of the hybrid task with the shapes and statistics of real data (full-length rows, sentinels
  where span corruption puts them, round(mlm_ratio * n) [M] among the ordinary tokens), as numpy arrays."""
  import numpy as np
  rng = np.random.default_rng(seed)
  pieces = vocab.vocab_size - vocab.extra_ids
  sentinel = lambda k: vocab.vocab_size - 1 - k
  clean = rng.integers(3, pieces, size=(batch_size, inputs_length), dtype=np.int32)
  targets = rng.integers(3, pieces, size=(batch_size, targets_length), dtype=np.int32)
  num_spans = max(1, targets_length // 4)
  mask = np.zeros_like(clean)
  masked = clean.copy()
  for b in range(batch_size):
    slots = np.sort(rng.choice(inputs_length - 1, size=num_spans, replace=False))
    clean[b, slots] = [sentinel(k) for k in range(num_spans)]
    targets[b, np.linspace(0, targets_length - 2, num_spans).astype(int)] = [sentinel(k) for k in range(num_spans)]
    clean[b, -1] = targets[b, -1] = 1  # EOS
    eligible = np.flatnonzero(clean[b] < pieces)
    eligible = eligible[clean[b, eligible] > 1]
    chosen = rng.choice(eligible, size=int(round(mlm_ratio * len(eligible))), replace=False)
    mask[b, chosen] = 1
    masked[b] = np.where(mask[b] == 1, mask_id, clean[b])
  decoder_inputs = np.pad(targets, ((0, 0), (1, 0)))[:, :-1]
  return {'encoder_input_tokens': masked, 'encoder_clean_tokens': clean, 'encoder_mlm_mask': mask,
          'decoder_target_tokens': targets, 'decoder_input_tokens': decoder_inputs,
          'decoder_loss_weights': (targets > 0).astype(np.int32)}


def vocab_sizes(vocab: SyntheticVocab):
  """The sizes the trainer's stages need of a synthetic vocabulary."""
  from spactor import trainer
  return trainer.VocabSizes(model=vocab.model_vocab_size, pieces=vocab.vocab_size - vocab.extra_ids)


def preset_scope(size: str, version: str = 't5_1_0', dtype: str = 'float32', attention_impl: str = 'plain',
                 remat_policy: str = 'none'):
  """A gin scope in which spactor.config.preset gives this preset, as a run's models/<version>_<size>.gin does.

  Scoped bindings leave the process's global gin configuration (and anyone else's bindings) untouched.
  """
  import gin
  with gin.unlock_config():
    for name, value in (('size', size), ('version', version), ('dtype', dtype), ('attention_impl', attention_impl),
                        ('remat_policy', remat_policy)):
      gin.bind_parameter(f'spactor_bench/spactor.config.preset.{name}', value)
  return gin.config_scope('spactor_bench')


@dataclasses.dataclass
class StepBench:
  """The trainer's own jitted train step of one stage, its state, and a device batch to feed it."""
  name: str
  step: Callable
  state: Any
  batch: dict
  flops_per_step: float  # spactor.flops, as the trainer reports it
  xla_flops: float  # XLA's cost analysis of the compiled step
  compile_seconds: float
  memory: dict  # XLA's memory analysis of the compiled step (bytes)

  def run(self, n: int = 1):
    """n train steps; blocks until done."""
    import jax
    for _ in range(n):
      self.state, metrics = self.step(self.state, self.batch)
    jax.block_until_ready((self.state, metrics))
    return metrics


def xla_flops(compiled) -> float:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax: one dict per computation
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get('flops', float('nan')))


def xla_memory(compiled) -> dict:
  """Bytes of the compiled step's arguments, outputs, aliased (donated) buffers and temporaries."""
  try:
    analysis = compiled.memory_analysis()
  except Exception:  # not every backend implements it
    return {}
  fields = ('argument_size_in_bytes', 'output_size_in_bytes', 'alias_size_in_bytes', 'temp_size_in_bytes',
            'generated_code_size_in_bytes')
  return {f: int(getattr(analysis, f)) for f in fields if hasattr(analysis, f)}


def tree_bytes(tree) -> int:
  import jax
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def build_step_benches(size: str, batch_size: int, inputs_length: int, model_vocab: Optional[int] = None,
                       version: str = 't5_1_0', dtype: str = 'float32', stages=('hybrid', 'sc'),
                       seed: int = 0, init_sc_directly: bool = False,
                       attention_impl: str = 'plain', remat_policy: str = 'none') -> dict[str, StepBench]:
  """Both stages' train steps exactly as spactor.train.run builds them with spactor.trainer (TrainConfig, build_stages,
  make_optimizer, init_state, switch_to_sc, compile_train_step), fed one synthetic batch of the hybrid task's
  model features. The SC stage gets its state by the trainer's own switch at τ, or, with init_sc_directly and
  stages=('sc',), by init_state of the SC stage (no generator is ever allocated: for memory figures). Imports
  nothing of TensorFlow or SeqIO."""
  import jax
  from spactor import partitioning, trainer as train

  vocab = sotu_or_synthetic_vocab(model_vocab)
  with preset_scope(size, version, dtype, attention_impl, remat_policy):
    config = train.TrainConfig(model_dir='/tmp/spactor_bench', total_steps=10 ** 6, tau=10 ** 5,
                               batch_size=batch_size, inputs_length=inputs_length, corpus='sotu', plot=False)
  stage_defs = train.build_stages(config, vocab_sizes(vocab))
  tx = train.make_optimizer(config)
  host_batch = synthetic_batch(batch_size, inputs_length, config.targets_length, vocab, vocab.mask_id,
                               seed=seed)
  mesh = partitioning.make_mesh(1)
  batch_sharding = partitioning.batch_sharding(mesh)
  batch = train.to_global(host_batch, batch_sharding)
  base_rng = jax.random.PRNGKey(seed)
  benches = {}
  with partitioning.logical_context(mesh):
    init_rng = jax.random.PRNGKey(seed + 1)
    if init_sc_directly and tuple(stages) == ('sc',):
      states = {'sc': train.init_state(stage_defs['sc'], tx, init_rng, host_batch, mesh)}
    else:
      states = {'hybrid': train.init_state(stage_defs['hybrid'], tx, init_rng, host_batch, mesh)}
      if 'sc' in stages:  # a copy: the steps donate their state, and the switch shares D's arrays with stage 1
        states['sc'] = jax.tree.map(lambda x: x.copy(), train.switch_to_sc(states['hybrid'], tx))
      if 'hybrid' not in stages:
        del states['hybrid']
    for name in stages:
      stage, state = stage_defs[name], states[name]
      shardings = jax.tree.map(lambda x: x.sharding, state)
      step = train.compile_train_step(stage, tx, base_rng, shardings, batch_sharding)
      start = time.perf_counter()
      compiled = step.lower(state, batch).compile()
      compile_seconds = time.perf_counter() - start
      benches[name] = StepBench(name, compiled, state, batch, stage.flops_per_step, xla_flops(compiled),
                                compile_seconds, xla_memory(compiled))
  return benches
