"""Makes the parity fixtures of tests/test_convert.py: tiny random T5s of both versions, a batch, and the logits
that the original implementations give on it. Run once in a throw-away venv; CI needs neither torch nor t5x.

  python3 -m venv /tmp/refvenv
  /tmp/refvenv/bin/pip install torch==2.13.0 'transformers>=4.46,<5' safetensors jax==0.10.2 flax==0.12.8
  /tmp/refvenv/bin/python tests/make_convert_fixtures.py --t5x_dir=/path/to/t5x/t5x/examples/t5
  # and with transformers 5.x (it writes T5.1.1 with a tied, unscaled lm_head: the hf5_ fixtures)
  python3 -m venv /tmp/refvenv5
  /tmp/refvenv5/bin/pip install torch==2.13.0 'transformers>=5.20,<6' safetensors
  /tmp/refvenv5/bin/python tests/make_convert_fixtures.py --hf_only

--t5x_dir is a directory holding t5x's examples/t5/network.py and layers.py (of a t5x checkout; the two files
need only jax and flax, so they are loaded by path rather than through t5x's package, which imports all of t5x).

Writes under tests/fixtures/convert/:
- hf<major>_<version>/: config.json + model.safetensors by transformers' own save_pretrained (T5.1.1 with a
  real untied lm_head under 4.x), and hf<major>_<version>_logits.npz: the batch and T5ForConditionalGeneration's
  logits;
- t5x_<version>.npz: t5x examples/t5 network params (flat t5x names under `target/`), the batch and its logits.
"""
import argparse
import importlib.util
import os
import sys

import numpy as np

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures', 'convert')
VOCAB = 100
# An encoder and a decoder of different depths, non-default relative attention buckets (HF only: t5x's network
# fixes 32 and 128), so a wrong mapping of any of them shows.
SHAPE = dict(d_model=16, d_kv=8, d_ff=24, num_layers=2, num_decoder_layers=3, num_heads=2)
HF_BUCKETS = dict(relative_attention_num_buckets=8, relative_attention_max_distance=16)


def batch() -> dict:
  """Two rows, the second padded; decoder inputs are the targets shifted right behind a 0."""
  rng = np.random.default_rng(1)
  enc = rng.integers(3, VOCAB, size=(2, 7)).astype(np.int32)
  enc[:, -1] = 1
  enc[1, 4:] = 0
  enc[1, 3] = 1
  tgt = rng.integers(3, VOCAB, size=(2, 5)).astype(np.int32)
  tgt[:, -1] = 1
  tgt[1, 3:] = 0
  tgt[1, 2] = 1
  dec = np.concatenate([np.zeros((2, 1), np.int32), tgt[:, :-1]], axis=1)
  return {'encoder_input_tokens': enc, 'decoder_input_tokens': dec, 'decoder_target_tokens': tgt}


def make_hf(version: str) -> None:
  import torch
  import transformers
  major = transformers.__version__.split('.')[0]
  gated = version == 't5_1_1'
  config = transformers.T5Config(vocab_size=VOCAB, feed_forward_proj='gated-gelu' if gated else 'relu',
                                 tie_word_embeddings=not gated, dropout_rate=0.0, **SHAPE, **HF_BUCKETS)
  torch.manual_seed(0 if gated else 1)
  model = transformers.T5ForConditionalGeneration(config).eval()
  with torch.no_grad():  # random layer norm scales too, so a swapped or missing norm shows
    for name, param in model.named_parameters():
      if 'layer_norm' in name:
        param.copy_(1.0 + 0.5 * torch.rand_like(param))
  name = f'hf{major}_{version}'
  model.save_pretrained(os.path.join(OUT, name), safe_serialization=True)
  inputs = batch()
  with torch.no_grad():
    logits = model(input_ids=torch.tensor(inputs['encoder_input_tokens'], dtype=torch.long),
                   attention_mask=torch.tensor(inputs['encoder_input_tokens'] > 0, dtype=torch.long),
                   decoder_input_ids=torch.tensor(inputs['decoder_input_tokens'], dtype=torch.long),
                   decoder_attention_mask=torch.tensor(inputs['decoder_target_tokens'] > 0, dtype=torch.long)).logits
  np.savez(os.path.join(OUT, f'{name}_logits.npz'), logits=logits.numpy().astype(np.float32), **inputs)
  print(f'{name}: transformers {transformers.__version__}, untied lm_head: '
        f'{model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()}')


def load_t5x_network(t5x_dir: str):
  """t5x's examples/t5 network module, loaded by file path with its `layers` import satisfied."""
  modules = {}
  for name in ('layers', 'network'):
    spec = importlib.util.spec_from_file_location(f't5x.examples.t5.{name}', os.path.join(t5x_dir, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    if name == 'layers':
      for parent in ('t5x', 't5x.examples', 't5x.examples.t5'):
        sys.modules.setdefault(parent, type(sys)(parent))
      sys.modules['t5x.examples.t5'].layers = module
    spec.loader.exec_module(module)
    modules[name] = module
  return modules['network']


def make_t5x(version: str, t5x_dir: str) -> None:
  import jax
  import jax.numpy as jnp
  from flax import traverse_util
  network = load_t5x_network(t5x_dir)
  gated = version == 't5_1_1'
  config = network.T5Config(vocab_size=VOCAB, dtype=jnp.float32, emb_dim=SHAPE['d_model'],
                            num_heads=SHAPE['num_heads'], num_encoder_layers=SHAPE['num_layers'],
                            num_decoder_layers=SHAPE['num_decoder_layers'], head_dim=SHAPE['d_kv'],
                            mlp_dim=SHAPE['d_ff'], mlp_activations=('gelu', 'linear') if gated else ('relu',),
                            dropout_rate=0.0, logits_via_embedding=not gated)
  model = network.Transformer(config)
  inputs = batch()
  params = model.init(jax.random.PRNGKey(2 if gated else 3), **inputs, enable_dropout=False)['params']
  flat = {'target/' + '/'.join(k): np.asarray(v, np.float32) for k, v in traverse_util.flatten_dict(params).items()}
  rng = np.random.default_rng(4)
  flat = {k: (1.0 + 0.5 * rng.random(v.shape, np.float32)) if k.endswith('/scale') else v for k, v in flat.items()}
  params = traverse_util.unflatten_dict({tuple(k.split('/')[1:]): v for k, v in flat.items()})
  logits = model.apply({'params': params}, **inputs, enable_dropout=False)
  np.savez(os.path.join(OUT, f't5x_{version}.npz'), logits=np.asarray(logits, np.float32), **inputs, **flat)
  print(f't5x_{version}: {len(flat)} tensors')


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--t5x_dir', help="directory with t5x's examples/t5 network.py and layers.py")
  parser.add_argument('--hf_only', action='store_true', help='only the Hugging Face fixtures')
  args = parser.parse_args(argv)
  if not args.hf_only and not args.t5x_dir:
    parser.error('--t5x_dir is needed for the t5x fixtures (or pass --hf_only)')
  os.makedirs(OUT, exist_ok=True)
  for version in ('t5_1_0', 't5_1_1'):
    make_hf(version)
    if not args.hf_only:
      make_t5x(version, args.t5x_dir)


if __name__ == '__main__':
  main(sys.argv[1:])
