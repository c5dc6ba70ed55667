r"""Converts T5 checkpoints between Hugging Face, t5x and this project's formats.

  python -m spactor.convert to-spactor SRC OUT   # for spactor.train init, ssr.generate, ssr.continual, finetuning
  python -m spactor.convert to-hf SRC OUT [--max_shard_size=2GB]
  python -m spactor.convert to-t5x SRC OUT [--t5x_step=N]
  python -m spactor.convert inspect SRC

SRC is detected: a Hugging Face T5 directory (config.json + model.safetensors or its sharded index), a t5x
checkpoint (a checkpoint_<step> directory, or a t5x model_dir whose newest step is taken), a spactor.train or
ssr.continual model_dir (any stage: a stage-1 checkpoint gives the discriminator and the shared embedder), or a
directory written by `to-spactor`. The T5 version, sizes and vocabulary size come from the source; with --size and
--version the source must be that preset (else one error naming every field that differs). OUT must not exist
(or be empty): nothing is overwritten. Every entry point also reads SRC directly; `to-spactor` checks it once and
stores it in the project's own format (see docs/checkpoints.md).
"""
import argparse
import logging
import os
import re
import sys

from spactor import checkpoint_io
from spactor.checkpoint_io import CheckpointError

SUBCOMMANDS = ('to-spactor', 'to-hf', 'to-t5x', 'inspect')
UNITS = {'': 1, 'B': 1, 'KB': 10 ** 3, 'MB': 10 ** 6, 'GB': 10 ** 9, 'KIB': 2 ** 10, 'MIB': 2 ** 20, 'GIB': 2 ** 30}


def parse_size(text: str) -> int:
  """'2GB', '500MB', '10GiB' or a number of bytes."""
  match = re.fullmatch(r'\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)?\s*', text.upper())
  if not match:
    raise argparse.ArgumentTypeError(f'{text!r} is not a size such as 2GB, 500MB or 1000000')
  return int(float(match.group(1)) * UNITS[match.group(2) or ''])


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m spactor.convert', description=__doc__.split('\n\n')[0],
                                   epilog=__doc__.split('\n\n', 1)[1], formatter_class=argparse.RawTextHelpFormatter)
  commands = parser.add_subparsers(dest='command', required=True, metavar='{' + ','.join(SUBCOMMANDS) + '}')
  helps = {'to-spactor': "write the project's format (<OUT>/params + <OUT>/spactor_t5.json)",
           'to-hf': 'write a Hugging Face T5 directory (config.json + model.safetensors), loadable by transformers '
                    '4.x and 5.x',
           'to-t5x': "write a t5x checkpoint (<OUT>/checkpoint_<step>, the public releases' msgpack + zarr format)",
           'inspect': 'print the format, T5 version and config of SRC'}
  for name in SUBCOMMANDS:
    sub = commands.add_parser(name, help=helps[name], description=helps[name])
    sub.add_argument('src', help='source checkpoint directory (format detected)')
    if name != 'inspect':
      sub.add_argument('out', help='output directory (must not exist or be empty)')
    sub.add_argument('--step', type=int, default=None,
                     help='step of a t5x or spactor model_dir to read (default: the newest)')
    sub.add_argument('--size', default=None, help='require this preset size (micro/tiny/small/base/large)')
    sub.add_argument('--version', default=None, help='require this T5 version (t5_1_0/t5_1_1), with --size')
    if name == 'to-hf':
      sub.add_argument('--max_shard_size', type=parse_size, default=None,
                       help='split model.safetensors into shards of at most this size (e.g. 2GB) with an index')
    if name == 'to-t5x':
      sub.add_argument('--t5x_step', type=int, default=None,
                       help='step number of the written checkpoint_<step> (default: the source step, else 0)')
  return parser


def describe(config, fmt: str, step) -> str:
  from spactor import config as config_lib
  version = checkpoint_io.version_of(config) or 'custom'
  sizes = [s for s in config_lib.SIZES if version != 'custom' and config_lib.t5_preset(
      s, version, vocab_size=config.vocab_size).__eq__(config)]
  fields = ', '.join(f'{f}={getattr(config, f)!r}' for f in checkpoint_io.ARCHITECTURE_FIELDS)
  return (f'format {fmt}' + (f', step {step}' if step is not None else '') + f'; T5 version {version}'
          + (f', preset size {sizes[0]}' if sizes else '') + f'\n{fields}')


def run(args) -> str:
  """Does what the parsed command line asks; returns the line to print."""
  if (args.size is None) != (args.version is None):
    raise CheckpointError('give --size and --version together (the preset the source must be)')
  flat, config, fmt, step = checkpoint_io.read_any(args.src, args.step)
  if args.size:
    checkpoint_io.check_preset(config, args.size, args.version, f'checkpoint {args.src}')
  count = sum(a.size for a in flat.values())
  if args.command == 'inspect':
    return f'{args.src}: {describe(config, fmt, step)}\n{len(flat)} tensors, {count:,} parameters'
  provenance = {'source': os.path.abspath(args.src), 'source_format': fmt, 'source_step': step}
  if args.command == 'to-spactor':
    out = checkpoint_io.write_converted(args.out, flat, config, provenance)
  elif args.command == 'to-hf':
    from spactor import hf_checkpoint
    out = hf_checkpoint.write(args.out, flat, config, max_shard_bytes=args.max_shard_size, provenance=provenance)
  else:
    from spactor import t5x_checkpoint
    t5x_step = args.t5x_step if args.t5x_step is not None else (step or 0)
    out = t5x_checkpoint.write(args.out, flat, config, step=t5x_step)
  version = checkpoint_io.version_of(config) or 'custom'
  return f'{args.src} ({fmt}, T5 {version}, {count:,} parameters) -> {out}'


def main(argv) -> None:
  logging.basicConfig(level=logging.WARNING)
  for noisy in ('absl', 'orbax', 'jax._src'):
    logging.getLogger(noisy).setLevel(logging.ERROR)
  args = build_parser().parse_args(argv)
  try:
    print(run(args), flush=True)
  except CheckpointError as e:
    raise SystemExit(f'error: {e}') from None


if __name__ == '__main__':
  main(sys.argv[1:])
