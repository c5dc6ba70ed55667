r"""Against the peer: span-corruption train steps per second, this project vs Hugging Face's PyTorch T5.

  python3 -m venv /tmp/benchvenv && /tmp/benchvenv/bin/pip install torch==2.13.0 transformers   # once
  .venv/bin/python bench/peer_torch.py                          # CPU: tiny (embedded vocab) and T5-small
  .venv/bin/python bench/peer_torch.py --configs=small:16:128:32128 --reps=7 --torch_compile

torch and transformers live only in a separate virtual environment (--torch_python, default
$SPACTOR_BENCH_PYTHON or /tmp/benchvenv/bin/python), never in the project's. The peer runs in a worker process
of that interpreter; this process runs the project's own SC train step (spactor.train.compile_train_step of the
`sc` stage, as after τ). The two take turns, one repetition each (so both see the same load), each idle while
the other runs; every repetition is `steps` train steps on the same synthetic batch (same shapes, same tokens).

Same model on both sides: T5.1.0 shapes of the preset (d_model, heads, d_kv, d_ff, layers, relu, tied output
scaled by d_model^-0.5, 32 relative buckets, dropout 0), float32; same optimizer: Adafactor with T5's settings
(factored second moments, decay 0.8 i.e. HF's decay_rate=-0.8, update clipping 1.0, parameter-scale updates,
no momentum), LR 0.01 (the trainer's 1/sqrt(10000) over the warm-up). HF's loss is plain cross-entropy (ours adds
T5's z-loss 1e-4, negligible work). The HF model runs eager (what its Trainer does by default), or compiled with
--torch_compile.

On a GPU (bf16, the MFU rows):
  .venv/bin/python bench/peer_torch.py --device=gpu --dtype=bfloat16 --configs=small:128:512:32128,base:128:512:32128 \
      --peak_tflops=989 --reps=10 --steps=5
needs jax[cuda] in .venv and a CUDA torch in the bench venv; the peer then runs under torch.autocast(bfloat16)
with float32 master weights, as our bf16 activations over float32 params. MFU = analytic FLOPs per step
(spactor.flops.sc_step_flops) x steps/s / peak.
"""
import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

DEFAULT_CONFIGS = 'tiny:32:128,small:16:128:32128'
DEFAULT_TORCH_PYTHON = os.environ.get('SPACTOR_BENCH_PYTHON', '/tmp/benchvenv/bin/python')
LEARNING_RATE = 0.01


# --- the peer (runs in the bench venv) ------------------------------------------------------------------------


def t5_shapes(size: str, version: str = 't5_1_0') -> dict:
  """The preset's discriminator shapes, read from spactor/config.py without importing jax (the peer's venv)."""
  import ast
  with open(os.path.join(common.REPO_ROOT, 'spactor', 'config.py')) as f:
    tree = ast.parse(f.read())
  for node in tree.body:
    if isinstance(node, ast.Assign) and getattr(node.targets[0], 'id', None) == 'DISCRIMINATOR_SHAPES':
      emb, heads, head_dim, mlp, enc, dec = ast.literal_eval(node.value)[version][size]
      return dict(d_model=emb, num_heads=heads, d_kv=head_dim, d_ff=mlp, num_layers=enc, num_decoder_layers=dec)
  raise RuntimeError('DISCRIMINATOR_SHAPES not found in spactor/config.py')


def torch_worker(spec: dict) -> None:
  """Builds the HF T5 and its Adafactor, then answers 'run N' with the seconds of N train steps."""
  import numpy as np
  import torch
  import transformers
  from transformers.optimization import Adafactor

  device = 'cuda' if spec['device'] == 'gpu' else 'cpu'
  if spec.get('torch_threads'):
    torch.set_num_threads(spec['torch_threads'])
  torch.manual_seed(0)
  config = transformers.T5Config(vocab_size=spec['vocab'], **t5_shapes(spec['size']), feed_forward_proj='relu',
                                 tie_word_embeddings=True, dropout_rate=0.0, relative_attention_num_buckets=32,
                                 relative_attention_max_distance=128, use_cache=False)
  model = transformers.T5ForConditionalGeneration(config).to(device)
  model.train()
  optimizer = Adafactor(model.parameters(), lr=LEARNING_RATE, scale_parameter=True, relative_step=False,
                        warmup_init=False, clip_threshold=1.0, decay_rate=-0.8, beta1=None, weight_decay=0.0)
  batch = common.synthetic_batch(spec['batch'], spec['inputs'], spec['targets'],
                                 common.SyntheticVocab(vocab_size=spec['vocab'] - 28), mask_id=spec['vocab'] - 28)
  to = lambda x: torch.as_tensor(np.asarray(x, np.int64), device=device)
  inputs, decoder_inputs = to(batch['encoder_clean_tokens']), to(batch['decoder_input_tokens'])
  labels = to(np.where(batch['decoder_loss_weights'] > 0, batch['decoder_target_tokens'], -100))
  autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=spec['dtype'] == 'bfloat16')

  def forward_backward():
    with autocast:
      loss = model(input_ids=inputs, attention_mask=inputs > 0, decoder_input_ids=decoder_inputs,
                   labels=labels).loss
    loss.backward()
    return loss

  if spec['torch_compile']:
    forward_backward = torch.compile(forward_backward)

  def step():
    loss = forward_backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss

  def sync():
    if device == 'cuda':
      torch.cuda.synchronize()

  start = time.perf_counter()
  loss = step()
  sync()
  facts = {'torch': torch.__version__, 'transformers': transformers.__version__,
           'torch_threads': torch.get_num_threads(), 'first_step_s': time.perf_counter() - start,
           'params': sum(p.numel() for p in model.parameters()), 'loss': loss.item()}
  print('READY ' + json.dumps(facts), flush=True)
  for line in sys.stdin:
    command, _, arg = line.strip().partition(' ')
    if command != 'run':
      break
    start = time.perf_counter()
    for _ in range(int(arg)):
      loss = step()
    sync()
    print(json.dumps({'seconds': time.perf_counter() - start, 'loss': loss.item()}), flush=True)


class TorchPeer:
  """The worker process, driven over its stdin/stdout."""

  def __init__(self, python: str, spec: dict):
    if not os.path.exists(python):
      raise SystemExit(f'no bench interpreter at {python}: create it with\n  python3 -m venv /tmp/benchvenv && '
                       f'/tmp/benchvenv/bin/pip install torch==2.13.0 transformers\nor pass --torch_python')
    self.proc = subprocess.Popen([python, os.path.abspath(__file__), '--worker', json.dumps(spec)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = self._read()
    if not line.startswith('READY '):
      raise RuntimeError(f'peer worker failed to start: {line!r}')
    self.facts = json.loads(line[len('READY '):])

  def _read(self) -> str:
    while True:
      line = self.proc.stdout.readline()
      if not line:
        raise RuntimeError(f'peer worker exited (code {self.proc.wait()})')
      if line.startswith('READY ') or line.startswith('{'):
        return line.strip()

  def run(self, steps: int) -> float:
    self.proc.stdin.write(f'run {steps}\n')
    self.proc.stdin.flush()
    return json.loads(self._read())['seconds']

  def close(self):
    try:
      self.proc.stdin.write('quit\n')
      self.proc.stdin.close()
    except OSError:
      pass
    self.proc.wait(timeout=60)


# --- this project (runs in .venv) ------------------------------------------------------------------------------


def measure(size: str, batch: int, inputs: int, vocab, reps: int, steps: int, args) -> dict:
  import jax
  from spactor import span_lengths
  targets = span_lengths.random_spans_helper(inputs)[1]
  bench = common.build_step_benches(size, batch, inputs, model_vocab=vocab, dtype=args.dtype, stages=('sc',))['sc']
  rows_vocab = bench.state.params['token_embedder']['embedding'].shape[0]
  peer = TorchPeer(args.torch_python, {'size': size, 'batch': batch, 'inputs': inputs, 'targets': targets,
                                       'vocab': rows_vocab, 'device': args.device, 'dtype': args.dtype,
                                       'torch_compile': args.torch_compile, 'torch_threads': args.torch_threads})
  try:
    bench.run(steps)  # warm-up (the peer did one step when it started)
    peer.run(1)
    ours, theirs = [], []
    for _ in range(reps):
      ours.append(common.time_call(lambda: bench.run(steps)) / steps)
      theirs.append(peer.run(steps) / steps)
  finally:
    peer.close()
  t_ours, t_theirs = common.median(ours), common.median(theirs)
  tokens = batch * (inputs + targets)
  row = {
      'model': f'{size} (t5_1_0)', 'batch': batch, 'inputs': inputs, 'targets': targets, 'vocab': rows_vocab,
      'device': jax.devices()[0].platform, 'dtype': args.dtype,
      'spactor_steps_per_s': 1 / t_ours, 'hf_torch_steps_per_s': 1 / t_theirs,
      'speedup': t_theirs / t_ours, 'paired_speedup': common.paired_ratio(theirs, ours),
      'spactor_tokens_per_s': tokens / t_ours, 'hf_torch_tokens_per_s': tokens / t_theirs,
      'gflops_per_step': bench.flops_per_step / 1e9,
      'spactor_gflops_per_s': bench.flops_per_step / t_ours / 1e9,
      'hf_torch_gflops_per_s': bench.flops_per_step / t_theirs / 1e9,
      'hf_mode': 'torch.compile' if args.torch_compile else 'eager', 'hf_threads': peer.facts['torch_threads'],
      'reps': reps, 'steps_per_rep': steps,
      'peer': peer.facts,
  }
  if args.peak_tflops:
    row['spactor_mfu'] = row['spactor_gflops_per_s'] / (1e3 * args.peak_tflops)
    row['hf_torch_mfu'] = row['hf_torch_gflops_per_s'] / (1e3 * args.peak_tflops)
  return row


COLUMNS = ('model', 'batch', 'inputs', 'vocab', 'device', 'dtype', 'hf_mode', 'hf_threads', 'spactor_steps_per_s',
           'hf_torch_steps_per_s', 'speedup', 'spactor_tokens_per_s', 'hf_torch_tokens_per_s', 'spactor_gflops_per_s')


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--configs', default=DEFAULT_CONFIGS,
                      help='preset:batch:inputs_length[:model_vocab], comma-separated (default vocab: embedded)')
  parser.add_argument('--reps', type=int, default=5)
  parser.add_argument('--steps', type=int, default=1, help='train steps per repetition')
  parser.add_argument('--torch_python', default=DEFAULT_TORCH_PYTHON)
  parser.add_argument('--torch_compile', action='store_true', help='torch.compile the peer forward/backward')
  parser.add_argument('--torch_threads', type=int, default=0,
                      help="the peer's intra-op threads (default 0: torch's own, one per core)")
  parser.add_argument('--device', default='cpu', choices=('cpu', 'gpu'))
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--peak_tflops', type=float, default=0.0,
                      help='device peak (dense, at --dtype) for MFU, e.g. 989 for an H100 SXM in bf16')
  parser.add_argument('--worker', default=None, help=argparse.SUPPRESS)
  common.add_common_flags(parser)
  args = parser.parse_args(argv)
  if args.worker:
    return torch_worker(json.loads(args.worker))

  import jax
  if args.device == 'gpu' and jax.default_backend() != 'gpu':
    raise SystemExit('--device=gpu, but jax has no GPU here (install jax[cuda] in .venv)')
  from bench import hybrid_overhead
  rows = []
  columns = COLUMNS + (('spactor_mfu', 'hf_torch_mfu') if args.peak_tflops else ())
  for size, batch, inputs, vocab in hybrid_overhead.parse_configs(args.configs):
    rows.append(measure(size, batch, inputs, vocab, args.reps, args.steps, args))
    print(common.table(rows[-1:], columns), flush=True)
  peer = rows[-1]['peer'] if rows else {}
  notes = [
      'steps/s and tokens/s (inputs + targets per example) are medians over repetitions taken in turns; '
      'speedup = HF step time / spactor step time.',
      'Both: float32 params, Adafactor (T5 settings), dropout 0, same synthetic batch.',
  ]
  facts = common.machine_facts({'peer_torch': peer.get('torch'), 'peer_transformers': peer.get('transformers'),
                                'peer_torch_threads': peer.get('torch_threads')})
  common.report('Span-corruption train step: spactor (JAX) vs Hugging Face T5 (PyTorch)', rows, facts, args.json,
                columns, notes)
  return rows


if __name__ == '__main__':
  main()
