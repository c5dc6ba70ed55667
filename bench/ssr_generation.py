r"""SSR imperfect-span generation: tokens per second with the KV cache against decoding without one.

  .venv/bin/python bench/ssr_generation.py                                 # tiny T5, random weights
  .venv/bin/python bench/ssr_generation.py --checkpoint_dir=runs/demo --batch=64 --reps=5

Both decoders are ssr.decoding.infill (use_cache=True: one decoder position per step from the KV cache;
use_cache=False: the whole prefix through the decoder at every step), jitted, with nucleus sampling (p = 0.9),
on the same batch of real generator inputs: the first examples of the SSR masking task (ssr_masked_sotu, 30% of
the tokens in Poisson(3) spans) with the token budgets and decode length that `python -m ssr.generate` uses. Both
draw the same samples (the test suite checks cache = no cache), so they generate the same tokens; the two are
timed in turns. Tokens = decoder tokens written (sentinels, fills, EOS), as ssr.generate counts them.

With random weights every span runs to max_span_fill or to the budget, a harder case than a trained generator;
--checkpoint_dir reads the T5 of a run of this project (its size: --size).
"""
import argparse
import functools
import os
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402


def generator_inputs(batch_size: int, inputs_length: int, corpus: str = 'sotu'):
  """(numpy arrays for infill, GenerateConfig, vocab) from the first examples of the SSR masking task."""
  import numpy as np
  from spactor import tasks as spactor_tasks
  from ssr import generate, tasks as ssr_tasks

  vocab = spactor_tasks.vocabulary(corpus)
  raw_length = ssr_tasks.raw_length_for(inputs_length)
  config = generate.GenerateConfig(inputs_length=inputs_length, batch_size=batch_size,
                                   decode_length=ssr_tasks.decode_length_for(inputs_length, raw_length))
  budget_of = functools.partial(generate.Generator.budget, types.SimpleNamespace(config=config))
  enc = np.zeros((batch_size, inputs_length), np.int32)
  num_spans, budget = np.zeros((batch_size,), np.int32), np.zeros((batch_size,), np.int32)
  row = 0
  for ex in ssr_tasks.masked_examples(corpus, 'train', inputs_length).as_numpy_iterator():
    n = len(ex['span_starts'])
    if budget_of(ex) < n + 1:  # too long for the SSR inputs length: ssr.generate drops it too
      continue
    enc[row, :len(ex['inputs'])] = ex['inputs']
    num_spans[row], budget[row] = n, budget_of(ex)
    row += 1
    if row == batch_size:
      break
  return {'encoder_tokens': enc, 'num_spans': num_spans, 'budget': budget,
          'example_ids': np.arange(batch_size, dtype=np.int32)}, config, vocab


def make_infill(module, config, vocab, use_cache: bool):
  import jax
  from ssr import decoding
  return jax.jit(functools.partial(
      decoding.infill, module, vocab=decoding.InfillVocab(vocab.vocab_size, vocab.extra_ids),
      max_length=config.decode_length, sampling_config=config.sampling, max_span_fill=config.max_span_fill,
      use_cache=use_cache))


def load_generator(size: str, vocab, checkpoint_dir=None, seed: int = 0):
  import jax
  import jax.numpy as jnp
  from spactor import config as config_lib, model as model_lib, vocab as vocab_lib
  t5 = config_lib.t5_preset(size, vocab_size=vocab_lib.model_vocab_size(vocab))
  module = model_lib.SpacTor(t5)
  if checkpoint_dir:
    from ssr import params as params_lib
    params, _ = params_lib.restore_t5_params(checkpoint_dir, module)
  else:
    tokens = jnp.ones((1, 8), jnp.int32)
    params = jax.jit(module.init)(jax.random.PRNGKey(seed), tokens, tokens, tokens)['params']
  return module, params


def build_decoders(size: str = 'tiny', batch_size: int = 32, inputs_length: int = 256, checkpoint_dir=None,
                   modes=('kv_cache', 'no_cache')) -> tuple[dict, dict, dict, object]:
  """({mode: blocking call of the compiled infill on the batch}, {mode: its output}, {mode: compile s}, config)."""
  import time
  import jax
  inputs, config, vocab = generator_inputs(batch_size, inputs_length)
  module, params = load_generator(size, vocab, checkpoint_dir)
  key = jax.random.PRNGKey(config.seed)
  args = (params, inputs['encoder_tokens'], inputs['num_spans'], inputs['budget'], inputs['example_ids'], key)
  fns, outputs, compile_s = {}, {}, {}
  for name in modes:
    start = time.perf_counter()
    compiled = make_infill(module, config, vocab, use_cache=name == 'kv_cache').lower(*args).compile()
    compile_s[name] = time.perf_counter() - start
    outputs[name] = jax.device_get(compiled(*args))
    fns[name] = functools.partial(lambda c: jax.block_until_ready(c(*args)), compiled)
  return fns, outputs, compile_s, config


def measure(size: str = 'tiny', batch_size: int = 32, inputs_length: int = 256, reps: int = 3,
            checkpoint_dir=None) -> list[dict]:
  import numpy as np
  fns, outputs, compile_s, config = build_decoders(size, batch_size, inputs_length, checkpoint_dir)
  times = common.interleaved(fns, reps=reps, warmup=0)  # the build ran each once already
  rows = []
  for name, out in outputs.items():
    tokens = int(np.sum(out['tokens'] != 0))
    t = common.median(times[name])
    rows.append({
        'decoder': name, 'model': size, 'weights': 'checkpoint' if checkpoint_dir else 'random',
        'batch': batch_size, 'decode_length': config.decode_length, 'top_p': config.sampling.top_p,
        'decoder_tokens': tokens, 'fill_tokens': int(np.sum(out['num_fill_tokens'])),
        'steps': int(np.max(np.sum(out['tokens'] != 0, axis=1))),  # decoder steps: the longest row
        'seconds': t, 'tokens_per_s': tokens / t, 'examples_per_s': batch_size / t,
        'compile_s': compile_s[name], 'reps': reps,
    })
  same = bool(np.array_equal(outputs['kv_cache']['tokens'], outputs['no_cache']['tokens']))
  for row in rows:
    row['same_tokens'] = same
    row['speedup_vs_no_cache'] = common.median(times['no_cache']) / row['seconds']
  return rows


COLUMNS = ('decoder', 'model', 'weights', 'batch', 'decode_length', 'top_p', 'decoder_tokens', 'steps', 'seconds',
           'tokens_per_s', 'speedup_vs_no_cache', 'same_tokens')


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--size', default='tiny')
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--inputs_length', type=int, default=256, help='SSR inputs length (ssr.generate default)')
  parser.add_argument('--reps', type=int, default=3)
  parser.add_argument('--checkpoint_dir', default=None, help='a run of this project (default: random weights)')
  common.add_common_flags(parser)
  args = parser.parse_args(argv)
  rows = measure(args.size, args.batch, args.inputs_length, args.reps, args.checkpoint_dir)
  notes = ['seconds: median wall time of one jitted infill call over the batch (interleaved repetitions); '
           'tokens_per_s = decoder tokens written / seconds.']
  common.report('SSR generation: nucleus sampling with and without the KV cache', rows, common.machine_facts(),
                args.json, COLUMNS, notes)
  return rows


if __name__ == '__main__':
  main()
