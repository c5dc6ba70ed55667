r"""Data pipeline: examples per second of the SeqIO preprocessing against the rate its consumer takes them.

  .venv/bin/python bench/data_pipeline.py
  .venv/bin/python bench/data_pipeline.py --batch=32 --inputs_length=128 --examples=4096 --reps=3

Pipelines (the embedded sotu corpus, train split, shuffled, seeded, repeated), each timed after a warm-up that
fills the shuffle buffer and traces the tf.data graph:
- `hybrid`: exactly what the trainer iterates (spactor.train.make_dataset): seqio.get_dataset of
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
  from spactor import train
  config = train.TrainConfig(model_dir='/tmp/spactor_bench', total_steps=10 ** 6, tau=10 ** 5,
                             batch_size=batch_size, inputs_length=inputs_length, corpus='sotu', seed=seed)
  return train.make_dataset(config, 'train', batch_size, shuffle=True)


def sc_dataset(batch_size: int, inputs_length: int, seed: int):
  import seqio
  import tasks
  from spactor import train
  lengths = train.task_lengths(inputs_length)
  ds = seqio.get_dataset(tasks.sc_task_name('sotu'), {'inputs': inputs_length, 'targets': lengths['targets']},
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
  rates = {name: [] for name in pipelines}
  for rep in range(args.reps):  # a fresh iterator each repetition (new seed): no cache effects between them
    for name, (make, batch, length) in pipelines.items():
      rates[name].append(examples_per_second(make(batch, length, seed=rep), batch, args.examples,
                                             args.warmup_batches))
      print(f'rep {rep} {name}: {rates[name][-1]:.0f} examples/s', flush=True)

  consumers = {}
  if not args.skip_consumers:
    bench = common.build_step_benches(args.size, args.batch, args.inputs_length, stages=('hybrid',))['hybrid']
    step_times = common.interleaved({'step': lambda: bench.run(args.train_steps)}, reps=args.reps)['step']
    consumers['hybrid'] = ('stage-1 train step', args.batch * args.train_steps / common.median(step_times))
    consumers['sc'] = consumers['hybrid']
    from bench import ssr_generation
    gen = ssr_generation.measure(args.size, args.ssr_batch, args.ssr_inputs_length, reps=args.reps,
                                 compare_uncached=False)[0]
    consumers['ssr_masking'] = ('ssr.generate infill (KV cache)', gen['examples_per_s'])

  rows = []
  for name, (_, batch, length) in pipelines.items():
    rate = common.median(rates[name])
    consumer, consumed = consumers.get(name, ('-', float('nan')))
    rows.append({'pipeline': name, 'batch': batch, 'inputs': length, 'examples_per_s': rate,
                 'consumer': f'{consumer} ({args.size})' if consumer != '-' else '-',
                 'consumer_examples_per_s': consumed, 'headroom': rate / consumed,
                 'target_met': (rate / consumed >= 5) if consumed == consumed else 'n/a'})
  notes = ['examples_per_s: median over repetitions of the steady-state rate (tf.data on all cores, alone).',
           'headroom = pipeline rate / consumer rate, both measured in this run; target >= 5.']
  common.report('Data pipeline throughput vs consumption', rows, common.machine_facts(), args.json, notes=notes)
  return rows


if __name__ == '__main__':
  main()
