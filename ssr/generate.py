r"""Imperfect-span generation: fill the SSR spans of a corpus with a T5 generator and write the SSR dataset.

  python -m ssr.generate --checkpoint_dir=runs/demo --out_dir=runs/ssr-data --split=train \
      --corpus=sotu --size=tiny --inputs_length=256 --max_examples=20000

One sample per example (nucleus p = 0.9 by default), decoded in batches by a jitted loop with a KV cache, the
batch split over all local devices (data-parallel mesh). The output is TFRecord shards (ssr.records) of
`examples_per_shard` examples each. A shard is written to a temporary file and renamed when complete, and shards
that exist are skipped, so a stopped run is resumed by running the same command again; the settings are kept in
generate_config-<split>.json and a resume with different settings is refused. Example e is sampled with a key
folded from its index, so the data does not depend on batch size, device count or where a run was resumed.

With several processes, process p writes the shards whose index is p modulo the number of processes.
"""
import argparse
import dataclasses
import functools
import json
import logging
import os
import sys
import time
from typing import Any, Iterable, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from spactor import model as model_lib
from spactor import partitioning
from ssr import decoding, formatting, records

log = logging.getLogger("ssr.generate")


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
  inputs_length: int = 256  # SSR inputs length (EOS included); the paper's 256
  decode_length: int = 128  # decoder positions (KV cache size); see ssr.tasks.decode_length_for
  examples_per_shard: int = 1024
  batch_size: int = 64
  sampling: decoding.SamplingConfig = decoding.SamplingConfig()
  max_span_fill: int = 16
  reserve_per_span: int = 1  # fill tokens of the budget kept for each later span (see ssr.decoding.infill)
  seed: int = 0

  def __post_init__(self):
    for name in ("inputs_length", "decode_length", "examples_per_shard", "batch_size", "max_span_fill"):
      if getattr(self, name) <= 0:
        raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
    if self.reserve_per_span < 0:
      raise ValueError(f"reserve_per_span must be >= 0, got {self.reserve_per_span}")

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


@dataclasses.dataclass
class GenerateStats:
  examples: int = 0  # written by this run
  dropped: int = 0  # too long for the SSR inputs length even with empty fills
  shards_written: int = 0
  shards_skipped: int = 0
  decoder_tokens: int = 0  # decoder tokens generated (sentinels, fills, EOS)
  fill_tokens: int = 0
  spans: int = 0  # spans filled
  budget_empty_spans: int = 0  # spans the token budget closed empty (plain infilling: keep rare)
  budget_cut_spans: int = 0  # spans the token budget cut short
  decode_seconds: float = 0.0
  seconds: float = 0.0

  @property
  def budget_empty_fraction(self) -> float:
    return self.budget_empty_spans / self.spans if self.spans else 0.0

  @property
  def tokens_per_second(self) -> float:
    return self.decoder_tokens / self.decode_seconds if self.decode_seconds else float("nan")


def _chunks(examples: Iterable[dict], size: int, limit: Optional[int]) -> Iterator[list]:
  chunk = []
  for i, ex in enumerate(examples):
    if limit is not None and i >= limit:
      break
    chunk.append(ex)
    if len(chunk) == size:
      yield chunk
      chunk = []
  if chunk:
    yield chunk


def check_or_write_settings(out_dir: str, split: str, settings: dict) -> None:
  """Writes the settings of a new output directory; refuses to resume one made with other settings."""
  path = os.path.join(out_dir, f"generate_config-{split}.json")
  settings = json.loads(json.dumps(settings))  # normalise tuples etc. as JSON reads them back
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as f:
      previous = json.load(f)
    if previous != settings:
      changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
      raise ValueError(f"{out_dir} holds {split} data generated with other settings ({', '.join(changed)}); "
                       f"use another --out_dir or the same settings to resume")
    return
  tf.io.gfile.makedirs(out_dir)
  records.write_json_atomic(path, json.dumps(settings, indent=2, sort_keys=True))


class Generator:
  """Jitted infilling over a data-parallel mesh of the local devices."""

  def __init__(self, module: model_lib.SpacTor, params, vocab_size: int, extra_ids: int, config: GenerateConfig,
               max_spans: int = 50):
    self.config = config
    self.vocab = decoding.InfillVocab(vocab_size, extra_ids)
    self.markers = formatting.SpanMarkers(vocab_size, extra_ids, max_spans)
    self.mesh = partitioning.make_mesh(1, jax.local_devices())
    devices = self.mesh.shape["data"]
    if config.batch_size % devices:
      raise ValueError(f"batch_size {config.batch_size} must be a multiple of the {devices} local devices")
    self.batch_sharding = partitioning.batch_sharding(self.mesh)
    self.params = jax.device_put(params, partitioning.replicated(self.mesh))
    self.key = jax.random.PRNGKey(config.seed)
    infill = jax.jit(functools.partial(
        decoding.infill, module, vocab=self.vocab, max_length=config.decode_length,
        sampling_config=config.sampling, max_span_fill=config.max_span_fill,
        reserve_per_span=config.reserve_per_span))
    start = time.perf_counter()
    rows = lambda *shape: jax.ShapeDtypeStruct((config.batch_size,) + shape, jnp.int32, sharding=self.batch_sharding)
    with partitioning.logical_context(self.mesh):
      self._infill = infill.lower(self.params, rows(config.inputs_length), rows(), rows(), rows(), self.key).compile()
    self.compile_seconds = time.perf_counter() - start

  def budget(self, ex) -> int:
    """Decoder tokens example `ex` may use so that its SSR input fits; < n + 1 means it cannot fit."""
    n = len(ex["span_starts"])
    kept = len(ex["tokens"]) - int(np.sum(ex["span_lengths"]))
    fills = self.config.inputs_length - 1 - kept - 2 * n  # room left for imperfect tokens (EOS counted)
    return min(n + 1 + fills, self.config.decode_length) if fills >= 0 else -1

  def fill_batch(self, batch: list[dict], ids: list[int]) -> dict[str, np.ndarray]:
    """Infills up to batch_size examples; rows beyond len(batch) are padding."""
    size, length = self.config.batch_size, self.config.inputs_length
    enc = np.zeros((size, length), np.int32)
    num_spans = np.zeros((size,), np.int32)
    budget = np.zeros((size,), np.int32)
    example_ids = np.zeros((size,), np.int32)
    for row, (ex, i) in enumerate(zip(batch, ids)):
      if len(ex["inputs"]) > length:
        raise ValueError(f"generator input of {len(ex['inputs'])} tokens is longer than {length}")
      enc[row, :len(ex["inputs"])] = ex["inputs"]
      num_spans[row] = len(ex["span_starts"])
      budget[row] = self.budget(ex)
      example_ids[row] = i
    put = lambda x: jax.device_put(x, self.batch_sharding)
    with partitioning.logical_context(self.mesh):
      out = self._infill(self.params, put(enc), put(num_spans), put(budget), put(example_ids), self.key)
    return jax.device_get(out)

  def shard_examples(self, chunk: list[dict], first_id: int, stats: GenerateStats) -> list[bytes]:
    """Generates one shard's SSR examples (serialized), in example order."""
    keep = [(i, ex) for i, ex in enumerate(chunk) if self.budget(ex) >= len(ex["span_starts"]) + 1]
    stats.dropped += len(chunk) - len(keep)
    serialized = []
    for b in range(0, len(keep), self.config.batch_size):
      part = keep[b:b + self.config.batch_size]
      start = time.perf_counter()
      out = self.fill_batch([ex for _, ex in part], [first_id + i for i, _ in part])
      stats.decode_seconds += time.perf_counter() - start
      stats.decoder_tokens += int(np.sum(out["tokens"] != decoding.PAD_ID))
      stats.fill_tokens += int(np.sum(out["num_fill_tokens"]))
      stats.spans += sum(len(ex["span_starts"]) for _, ex in part)
      stats.budget_empty_spans += int(np.sum(out["budget_empty"]))
      stats.budget_cut_spans += int(np.sum(out["budget_cut"]))
      for row, (i, ex) in enumerate(part):
        serialized.append(records.encode(self.ssr_record(ex, first_id + i, out, row)))
    return serialized

  def ssr_record(self, ex, example_id, out, row) -> dict[str, Any]:
    n = len(ex["span_starts"])
    fills = decoding.split_fills(out["tokens"][row], out["fill_mask"][row], n, self.vocab)
    inputs, targets = formatting.ssr_example(ex["tokens"], ex["span_starts"], ex["span_lengths"], fills,
                                             self.markers)
    if len(inputs) + 1 > self.config.inputs_length:
      raise AssertionError(f"example {example_id}: SSR input of {len(inputs) + 1} tokens exceeds the budget")
    return {"inputs": inputs, "targets": targets, "id": example_id, "num_spans": n,
            "truth_length": int(np.sum(ex["span_lengths"])), "imperfect_length": int(out["num_fill_tokens"][row]),
            "generator_loss": float(out["loss"][row]), "sampled_tokens": int(out["num_sampled"][row])}


def generate(generator: Generator, examples: Iterable[dict], out_dir: str, split: str, settings: dict,
             max_examples: Optional[int] = None, progress: bool = True) -> GenerateStats:
  """Writes the SSR shards of the first `max_examples` (None: all) of `examples` (masked-task examples as numpy
  dicts, in a fixed order)."""
  config = generator.config
  check_or_write_settings(out_dir, split, {**settings, "generate": config.to_json(), "max_examples": max_examples})
  stats = GenerateStats()
  start = time.perf_counter()
  bar = None
  if progress and jax.process_index() == 0:
    from tqdm import tqdm
    bar = tqdm(total=max_examples, unit="ex", desc=f"ssr.generate {split}", dynamic_ncols=True,
               file=sys.stderr, mininterval=1.0)
  for shard, chunk in enumerate(_chunks(examples, config.examples_per_shard, max_examples)):
    path = records.shard_path(out_dir, split, shard)
    mine = shard % jax.process_count() == jax.process_index()
    if not mine or tf.io.gfile.exists(path):
      stats.shards_skipped += mine
    else:
      serialized = generator.shard_examples(chunk, shard * config.examples_per_shard, stats)
      records.write_shard(path, serialized)
      stats.shards_written += 1
      stats.examples += len(serialized)
    if bar is not None:
      bar.set_postfix_str(f"shards written={stats.shards_written} skipped={stats.shards_skipped} "
                          f"tokens/s={stats.tokens_per_second:.0f}", refresh=False)
      bar.update(len(chunk))
  if bar is not None:
    bar.close()
  stats.seconds = time.perf_counter() - start
  return stats


# --- command line ------------------------------------------------------------------------------------------


def _numpy_examples(dataset: tf.data.Dataset) -> Iterator[dict]:
  keys = ("inputs", "tokens", "span_starts", "span_lengths")
  for ex in dataset.as_numpy_iterator():
    yield {k: ex[k] for k in keys}


def parse_args(argv):
  p = argparse.ArgumentParser(prog="python -m ssr.generate", description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--checkpoint_dir", required=True,
                 help="the generator: model_dir of an SC or SpacTor run, or a public T5 (a Hugging Face or t5x "
                      "checkpoint, or its `python -m spactor.convert to-spactor` output; docs/checkpoints.md)")
  p.add_argument("--checkpoint_step", type=int, default=None, help="default: the newest")
  p.add_argument("--out_dir", required=True)
  p.add_argument("--split", default="train", help="comma-separated: train,validation")
  p.add_argument("--corpus", default="sotu")
  p.add_argument("--vocab_file", default=None,
                 help="SentencePiece model of the c4 corpus (a public T5's: a local copy of the public T5 "
                      "vocabulary, which cannot be downloaded here); binds spactor.vocab.c4_vocab_file.path")
  p.add_argument("--size", default="tiny", help="generator preset size (spactor.config.preset)")
  p.add_argument("--version", default="t5_1_0")
  p.add_argument("--inputs_length", type=int, default=256)
  p.add_argument("--noise_density", type=float, default=0.3)
  p.add_argument("--mean_span_length", type=float, default=3.0, help="Poisson lambda of span lengths")
  p.add_argument("--examples_per_shard", type=int, default=1024)
  p.add_argument("--max_examples", default=None,
                 help="most examples per split, one number or one per split (e.g. 20000,1000); default: all")
  p.add_argument("--batch_size", type=int, default=64)
  p.add_argument("--top_p", type=float, default=0.9)
  p.add_argument("--top_k", type=int, default=0)
  p.add_argument("--temperature", type=float, default=1.0)
  p.add_argument("--max_span_fill", type=int, default=16)
  p.add_argument("--reserve_per_span", type=int, default=1,
                 help="fill tokens of the budget kept for each later span, so the budget rarely leaves one empty")
  p.add_argument("--seed", type=int, default=0, help="sampling seed")
  p.add_argument("--data_seed", type=int, default=0, help="masking seed (SeqIO)")
  return p.parse_args(argv)


def main(argv):
  """Holds --out_dir for this run (a second one there refuses to start); bad input ends in one paragraph."""
  from spactor import cli
  debug = cli.debug_requested(argv)
  cli.configure_logging(debug)
  args = parse_args([arg for arg in argv if arg != "--debug"])
  with cli.usage_errors_reported(debug), cli.hold_model_dir(args.out_dir):
    generate_splits(args)


def generate_splits(args):
  import gin
  from spactor import tasks as spactor_tasks
  from spactor import config as config_lib
  from spactor import vocab as vocab_lib
  from ssr import params as params_lib
  from ssr import tasks as ssr_tasks

  gin.bind_parameter("ssr.tasks.ssr_masking.noise_density", args.noise_density)
  gin.bind_parameter("ssr.tasks.ssr_masking.mean_span_length", args.mean_span_length)
  if args.vocab_file:
    if args.corpus != "c4":
      raise SystemExit(f"error: --vocab_file is the c4 corpus's vocabulary; --corpus is {args.corpus!r}")
    gin.bind_parameter("c4_vocab_file.path", args.vocab_file)
  vocab = spactor_tasks.vocabulary(args.corpus)
  try:  # a missing vocabulary, or a checkpoint that is not this model: named in the message
    t5 = config_lib.t5_preset(args.size, args.version, vocab_size=vocab_lib.model_vocab_size(vocab))
    module = model_lib.SpacTor(t5)
    params, step = params_lib.restore_t5_params(args.checkpoint_dir, module, args.checkpoint_step)
  except (ValueError, FileNotFoundError) as e:
    raise SystemExit(f"error: {e}") from None
  raw_length = ssr_tasks.raw_length_for(args.inputs_length, args.noise_density, args.mean_span_length)
  splits = args.split.split(",")
  limits = [int(x) for x in args.max_examples.split(",")] if args.max_examples else [None]
  if len(limits) not in (1, len(splits)):
    raise SystemExit(f"error: --max_examples gives {len(limits)} numbers for {len(splits)} splits")
  limits = limits * len(splits) if len(limits) == 1 else limits
  config = GenerateConfig(
      inputs_length=args.inputs_length,
      decode_length=ssr_tasks.decode_length_for(args.inputs_length, raw_length, args.noise_density),
      examples_per_shard=args.examples_per_shard, batch_size=args.batch_size,
      sampling=decoding.SamplingConfig(top_p=args.top_p, top_k=args.top_k, temperature=args.temperature),
      max_span_fill=args.max_span_fill, reserve_per_span=args.reserve_per_span, seed=args.seed)
  generator = Generator(module, params, vocab.vocab_size, vocab.extra_ids, config)
  settings = {"checkpoint_dir": os.path.abspath(args.checkpoint_dir), "checkpoint_step": step,
              "corpus": args.corpus, "size": args.size, "version": args.version, "raw_length": raw_length,
              "noise_density": args.noise_density, "mean_span_length": args.mean_span_length,
              "data_seed": args.data_seed}
  for split, limit in zip(splits, limits):
    examples = _numpy_examples(ssr_tasks.masked_examples(args.corpus, split, args.inputs_length, args.data_seed))
    stats = generate(generator, examples, args.out_dir, split, settings, max_examples=limit)
    print(f"ssr.generate {split}: {stats.examples} examples in {stats.shards_written} new shards "
          f"({stats.shards_skipped} already done, {stats.dropped} too long dropped) -> {args.out_dir}; "
          f"{stats.decoder_tokens} decoder tokens ({stats.fill_tokens} in spans) at "
          f"{stats.tokens_per_second:.0f} tokens/s on {jax.local_device_count()} {jax.default_backend()} "
          f"device(s); {stats.seconds:.1f}s in all; of {stats.spans} spans the token budget left "
          f"{stats.budget_empty_spans} empty ({stats.budget_empty_fraction:.2%}) and cut {stats.budget_cut_spans} "
          f"short", flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
