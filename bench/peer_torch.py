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

A config is `[version/]preset:batch:inputs_length[:model_vocab]`, e.g. `t5_1_1/base:64:512:32128` (T5.1.1: gated
GELU, untied output; the peer gets HF's `feed_forward_proj='gated-gelu'`, `tie_word_embeddings=False`).
`--attention_impl=plain,dot_product_attention` measures our step once per T5Config.attention_impl, each as its own
row, all taking turns with the same peer; `--peer=none` measures ours alone (an image without transformers).

On a GPU (bf16, the MFU rows; bench/gpu_suite.sh runs the set for docs/benchmarks.md in one call):
  python3 bench/peer_torch.py --device=gpu --dtype=bfloat16 --torch_python=python3 \
      --configs=base:64:512:32128,t5_1_1/base:64:512:32128,small:128:512:32128 \
      --attention_impl=plain,dot_product_attention --reps=5 --steps=5
needs jax with CUDA and a CUDA torch (one interpreter may hold both: the peer is another process of it); the peer
runs under torch.autocast(bfloat16) with float32 master weights, as our bf16 activations over float32 params.
Memory for both sides: JAX allocates on demand (XLA_PYTHON_CLIENT_PREALLOCATE=false, set here before jax starts,
instead of taking 75% of the GPU up front), each config's peer is a fresh process (its memory goes back when it
exits), and our steps of a config are deleted before the next one's are built. MFU = analytic FLOPs per step
(spactor.flops.sc_step_flops, the same count for both sides) x steps/s / peak (--peak_tflops; on an H100/H200
in bf16 989 when not given). Compile time: ours, lowering + XLA compilation of the step; the peer's first step.
Nothing here imports TensorFlow or SeqIO: the step runs on synthetic batches through spactor.trainer.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

DEFAULT_CONFIGS = 'tiny:32:128,small:16:128:32128'
# Dense bf16 peaks (TFLOP/s) by device kind, for MFU when --peak_tflops is not given.
BF16_PEAK_TFLOPS = {'H200': 989.0, 'H100 PCIe': 756.0, 'H100': 989.0, 'A100': 312.0}  # first match wins
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
  t5_1_1 = spec.get('version', 't5_1_0') == 't5_1_1'
  config = transformers.T5Config(vocab_size=spec['vocab'], **t5_shapes(spec['size'], spec.get('version', 't5_1_0')),
                                 feed_forward_proj='gated-gelu' if t5_1_1 else 'relu', tie_word_embeddings=not t5_1_1,
                                 dropout_rate=0.0, relative_attention_num_buckets=32,
                                 relative_attention_max_distance=128, use_cache=False)
  model = transformers.T5ForConditionalGeneration(config).to(device)
  model.train()
  optimizer = Adafactor(model.parameters(), lr=LEARNING_RATE, scale_parameter=True, relative_step=False,
                        warmup_init=False, clip_threshold=1.0, decay_rate=-0.8, beta1=None, weight_decay=0.0)
  batch = common.synthetic_batch(spec['batch'], spec['inputs'], spec['targets'],
                                 common.SyntheticVocab(vocab_size=spec['vocab_size']), mask_id=spec['vocab_size'])
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
  peak_memory = lambda: torch.cuda.max_memory_allocated() if device == 'cuda' else 0
  facts = {'torch': torch.__version__, 'transformers': transformers.__version__,
           'torch_threads': torch.get_num_threads(), 'first_step_s': time.perf_counter() - start,
           'params': sum(p.numel() for p in model.parameters()), 'loss': loss.item()}
  print('READY ' + json.dumps(facts), flush=True)
  for line in sys.stdin:
    command, _, arg = line.strip().partition(' ')
    if command != 'run':
      break
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(int(arg)):
      loss = step()
    sync()
    print(json.dumps({'seconds': time.perf_counter() - start, 'cpu_seconds': time.process_time() - cpu_start,
                      'loss': loss.item(), 'peak_bytes': peak_memory()}), flush=True)
  if device == 'cuda':
    torch.cuda.empty_cache()


class TorchPeer:
  """The worker process, driven over its stdin/stdout."""

  def __init__(self, python: str, spec: dict):
    python = shutil.which(python) or python  # a name on PATH (python3) or a path
    if not os.path.exists(python):
      raise SystemExit(f'no bench interpreter at {python}: create it with\n  python3 -m venv /tmp/benchvenv && '
                       f'/tmp/benchvenv/bin/pip install torch==2.13.0 transformers\nor pass --torch_python')
    self.proc = subprocess.Popen([python, os.path.abspath(__file__), '--worker', json.dumps(spec)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = self._read()
    if not line.startswith('READY '):
      raise RuntimeError(f'peer worker failed to start: {line!r}')
    self.facts = json.loads(line[len('READY '):])
    self.cpu_seconds = []  # process CPU seconds per step of each run

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
    answer = json.loads(self._read())
    self.facts['peak_bytes'] = answer.get('peak_bytes', 0)
    self.cpu_seconds.append(answer['cpu_seconds'] / steps)
    return answer['seconds']

  def close(self):
    try:
      self.proc.stdin.write('quit\n')
      self.proc.stdin.close()
    except OSError:
      pass
    self.proc.wait(timeout=60)


# --- this project (runs in .venv) ------------------------------------------------------------------------------


def parse_configs(text: str) -> list[tuple[str, str, int, int, Optional[int]]]:
  """'[version/]preset:batch:inputs[:model_vocab]', comma-separated -> (version, preset, batch, inputs, vocab)."""
  from bench import hybrid_overhead
  configs = []
  for item in text.split(','):
    version, _, rest = item.rpartition('/')
    for size, batch, inputs, vocab in hybrid_overhead.parse_configs(rest):
      configs.append((version or 't5_1_0', size, batch, inputs, vocab))
  return configs


def peak_tflops(args) -> float:
  """--peak_tflops, or the known bf16 peak of this GPU (0: unknown, no MFU)."""
  if args.peak_tflops or args.device != 'gpu' or args.dtype != 'bfloat16':
    return args.peak_tflops
  import jax
  kind = jax.devices()[0].device_kind
  return next((peak for name, peak in BF16_PEAK_TFLOPS.items() if name in kind), 0.0)


def device_peak_bytes() -> int:
  """Peak bytes JAX held on the device so far (0 where the backend keeps no statistics, as the CPU)."""
  import jax
  stats = jax.devices()[0].memory_stats() or {}
  return int(stats.get('peak_bytes_in_use', 0))


def attention_backend(impl: str, dtype: str, head_dim: int) -> str:
  """What runs the attention: the implementation and, for dot_product_attention, the kernel jax is handed."""
  from spactor import model as model_lib
  return f'dpa:{model_lib.dot_product_attention_backend(dtype, head_dim)}' if impl == 'dot_product_attention' else impl


def build_ours(version: str, size: str, batch: int, inputs: int, vocab, impls, args) -> dict:
  """impl -> StepBench, or impl -> the error that stopped it (one failing kernel must not end the whole run)."""
  import traceback
  ours = {}
  for impl in impls:
    try:
      ours[impl] = common.build_step_benches(size, batch, inputs, model_vocab=vocab, version=version,
                                             dtype=args.dtype, stages=('sc',), attention_impl=impl,
                                             remat_policy=args.remat_policy)['sc']
      ours[impl].run(args.steps)  # warm-up
    except Exception as error:  # reported in the row, with its traceback on stderr
      traceback.print_exc()
      ours[impl] = f'{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ""}'[:300]
  return ours


def measure(version: str, size: str, batch: int, inputs: int, vocab, args) -> list[dict]:
  """One row per attention implementation of ours, all taking turns with one peer on the same batch."""
  import gc
  import jax
  from spactor import config as config_lib, flops, span_lengths
  targets = span_lengths.random_spans_helper(inputs)[1]
  synthetic = common.sotu_or_synthetic_vocab(vocab)
  impls = args.attention_impl.split(',')
  ours = build_ours(version, size, batch, inputs, vocab, impls, args)
  peer, peer_error = None, ''
  if args.peer == 'hf':
    try:
      peer = TorchPeer(args.torch_python, {
          'size': size, 'version': version, 'batch': batch, 'inputs': inputs, 'targets': targets,
          'vocab': synthetic.model_vocab_size, 'vocab_size': synthetic.vocab_size, 'device': args.device,
          'dtype': args.dtype, 'torch_compile': args.torch_compile, 'torch_threads': args.torch_threads})
      peer.run(1)
    except (RuntimeError, OSError) as error:
      peer_error = f'peer: {error}'
  runners = {impl: (lambda b=bench: b.run(args.steps)) for impl, bench in ours.items() if not isinstance(bench, str)}
  times = {name: [] for name in runners}
  cpu_times = {name: [] for name in runners}  # process CPU seconds per step: robust to other jobs' load
  theirs = []
  try:
    for _ in range(args.reps):
      for name, run in runners.items():
        cpu_start = time.process_time()
        times[name].append(common.time_call(run) / args.steps)
        cpu_times[name].append((time.process_time() - cpu_start) / args.steps)
      if peer is not None:
        theirs.append(peer.run(args.steps) / args.steps)
  finally:
    if peer is not None:
      peer.close()
  t5 = config_lib.preset(size, version, vocab_size=synthetic.model_vocab_size, dtype=args.dtype).t5
  flops_per_step = flops.sc_step_flops(t5, flops.Lengths(inputs=inputs, targets=targets), batch)
  tokens = batch * (inputs + targets)
  peak = peak_tflops(args)
  t_theirs = common.median(theirs)
  rows = []
  for impl, bench in ours.items():
    t_ours = common.median(times.get(impl, []))
    row = {
        'model': f'{size} ({version})', 'batch': batch, 'inputs': inputs, 'targets': targets,
        'vocab': synthetic.model_vocab_size, 'device': jax.devices()[0].platform, 'dtype': args.dtype,
        'attention': attention_backend(impl, args.dtype, t5.head_dim), 'remat': args.remat_policy,
        'spactor_steps_per_s': 1 / t_ours, 'hf_torch_steps_per_s': 1 / t_theirs,
        'speedup': t_theirs / t_ours, 'paired_speedup': common.paired_ratio(theirs, times.get(impl, [])),
        'spactor_tokens_per_s': tokens / t_ours, 'hf_torch_tokens_per_s': tokens / t_theirs,
        'gflops_per_step': flops_per_step / 1e9,
        'spactor_gflops_per_s': flops_per_step / t_ours / 1e9,
        'hf_torch_gflops_per_s': flops_per_step / t_theirs / 1e9,
        'spactor_cpu_s_per_step': common.median(cpu_times.get(impl, [])),
        'hf_torch_cpu_s_per_step': common.median(peer.cpu_seconds[-args.reps:]) if peer else float('nan'),
        'spactor_compile_s': float('nan') if isinstance(bench, str) else bench.compile_seconds,
        'hf_first_step_s': peer.facts['first_step_s'] if peer else float('nan'),
        'hf_mode': ('torch.compile' if args.torch_compile else 'eager') if peer else 'none',
        'hf_threads': peer.facts['torch_threads'] if peer else '',
        'reps': args.reps, 'steps_per_rep': args.steps, 'peer': peer.facts if peer else {},
        'error': '; '.join(e for e in (bench if isinstance(bench, str) else '', peer_error) if e),
    }
    if peak:
      row['spactor_mfu'] = row['spactor_gflops_per_s'] / (1e3 * peak)
      row['hf_torch_mfu'] = row['hf_torch_gflops_per_s'] / (1e3 * peak)
    rows.append(row)
  rows[0]['jax_peak_gib'] = device_peak_bytes() / 2 ** 30
  rows[0]['hf_peak_gib'] = (peer.facts.get('peak_bytes', 0) if peer else 0) / 2 ** 30
  del ours, runners  # the next config's steps get the device memory
  gc.collect()
  jax.clear_caches()
  return rows


COLUMNS = ('model', 'batch', 'inputs', 'vocab', 'device', 'dtype', 'attention', 'remat', 'hf_mode', 'hf_threads',
           'spactor_steps_per_s', 'hf_torch_steps_per_s', 'speedup', 'spactor_tokens_per_s', 'hf_torch_tokens_per_s',
           'spactor_gflops_per_s', 'spactor_cpu_s_per_step', 'hf_torch_cpu_s_per_step', 'spactor_compile_s',
           'hf_first_step_s')


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--configs', default=DEFAULT_CONFIGS,
                      help='[version/]preset:batch:inputs_length[:model_vocab], comma-separated (default version '
                           't5_1_0, vocab: the embedded vocabulary\'s 4224)')
  parser.add_argument('--reps', type=int, default=5)
  parser.add_argument('--steps', type=int, default=1, help='train steps per repetition')
  parser.add_argument('--torch_python', default=DEFAULT_TORCH_PYTHON)
  parser.add_argument('--torch_compile', action='store_true', help='torch.compile the peer forward/backward')
  parser.add_argument('--torch_threads', type=int, default=0,
                      help="the peer's intra-op threads (default 0: torch's own, one per core)")
  parser.add_argument('--device', default='cpu', choices=('cpu', 'gpu'))
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--peak_tflops', type=float, default=0.0,
                      help='device peak (dense, at --dtype) for MFU; default on a GPU in bf16: the known peak '
                           'of an H100/H200 (989) or A100 (312)')
  parser.add_argument('--attention_impl', default='plain',
                      help='T5Config.attention_impl of our step, comma-separated for one row each (e.g. '
                           'plain,dot_product_attention)')
  parser.add_argument('--remat_policy', default='none',
                      help="T5Config.remat_policy of our step ('none', 'minimal', 'full'): for a batch that only "
                           "fits with it; the peer never rematerializes")
  parser.add_argument('--peer', default='hf', choices=('hf', 'none'), help="'none': measure ours alone")
  parser.add_argument('--worker', default=None, help=argparse.SUPPRESS)
  common.add_common_flags(parser)
  args = parser.parse_args(argv)
  if args.worker:
    return torch_worker(json.loads(args.worker))

  if args.device == 'gpu':  # before jax starts: allocate on demand, leave the peer its share of the GPU
    os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  import jax
  if args.device == 'gpu' and jax.default_backend() != 'gpu':
    raise SystemExit(f'--device=gpu, but jax has no GPU here (its backend is {jax.default_backend()!r}): run it '
                     f'where jax has CUDA (bench/gpu_suite.sh), or leave --device at cpu')
  from spactor import config as config_lib
  unknown = [impl for impl in args.attention_impl.split(',') if impl not in config_lib.ATTENTION_IMPLS]
  if unknown:
    raise SystemExit(f'--attention_impl: unknown {", ".join(unknown)}; known: {", ".join(config_lib.ATTENTION_IMPLS)}')
  if args.remat_policy not in config_lib.REMAT_POLICIES:
    raise SystemExit(f'--remat_policy: unknown {args.remat_policy}; known: {", ".join(config_lib.REMAT_POLICIES)}')
  rows = []
  columns = COLUMNS + (('spactor_mfu', 'hf_torch_mfu') if peak_tflops(args) else ()) + ('error',)
  for version, size, batch, inputs, vocab in parse_configs(args.configs):
    rows.extend(measure(version, size, batch, inputs, vocab, args))
    print(common.table(rows, columns), flush=True)
    if args.json:  # after every config, so that a run stopped at its time limit keeps what it measured
      common.write_json(args.json, 'partial', rows)
  peer = next((row['peer'] for row in rows if row['peer']), {})
  notes = [
      'steps/s and tokens/s (inputs + targets per example) are medians over repetitions taken in turns; '
      'speedup = HF step time / spactor step time. cpu_s_per_step: CPU seconds of each side\'s process per step '
      '(all its threads; less sensitive than wall time to other jobs, but it counts threads that spin while waiting).',
      f'Both: float32 params, {args.dtype} activations, Adafactor (T5 settings), dropout 0, same synthetic batch.',
  ]
  if peak_tflops(args):
    notes.append(f'MFU against {peak_tflops(args):g} TFLOP/s ({jax.devices()[0].device_kind}); FLOPs per step: '
                 'spactor.flops.sc_step_flops for both sides.')
  facts = common.machine_facts({'peer_torch': peer.get('torch'), 'peer_transformers': peer.get('transformers'),
                                'peer_torch_threads': peer.get('torch_threads'),
                                'device_kind': jax.devices()[0].device_kind,
                                'xla_python_client_preallocate': os.environ.get('XLA_PYTHON_CLIENT_PREALLOCATE')})
  common.report('Span-corruption train step: spactor (JAX) vs Hugging Face T5 (PyTorch)', rows, facts, args.json,
                columns, notes)
  return rows


if __name__ == '__main__':
  main()
