"""The training core imports and runs with TensorFlow and SeqIO unavailable (a bare accelerator image)."""
import json
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# In the child, `import tensorflow` / `import seqio` fail and find_spec finds nothing, as on an image without them.
BLOCK = textwrap.dedent('''
    import sys
    for name in ('tensorflow', 'seqio', 'tensorflow_datasets'):
      sys.modules[name] = None
''')


def run_child(code: str, tmp_path) -> dict:
  script = tmp_path / 'child.py'
  script.write_text(BLOCK + textwrap.dedent(code))
  env = {**os.environ, 'PYTHONPATH': ROOT, 'JAX_PLATFORMS': 'cpu'}
  out = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-4000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_core_imports_without_tensorflow(tmp_path):
  result = run_child('''
      import json, sys
      from spactor import checkpointing, cli, config, flops, metrics_io, model, objectives, stages, trainer
      print(json.dumps({'loaded': sorted(m for m in ('tensorflow', 'seqio') if sys.modules.get(m) is not None)}))
  ''', tmp_path)
  assert result == {'loaded': []}


def test_train_loop_runs_across_tau_on_synthetic_batches_without_tensorflow(tmp_path):
  """Two hybrid steps, the switch, one SC step; a checkpoint without a data item; metrics.jsonl without TB."""
  result = run_child(f'''
      import json, sys
      import jax, numpy as np
      from bench import common
      from spactor import checkpointing, metrics_io, partitioning, trainer
      with common.preset_scope('micro'):
        config = trainer.TrainConfig(model_dir={str(tmp_path / 'run')!r}, total_steps=3, tau=2, batch_size=2,
                                     inputs_length=16, log_every=1, eval_every=100, checkpoint_every=3, plot=False)
      vocab = common.SyntheticVocab(vocab_size=228)
      sizes = trainer.VocabSizes(model=256, pieces=vocab.vocab_size - vocab.extra_ids)
      stage_defs = trainer.build_stages(config, sizes)
      batch = common.synthetic_batch(2, 16, config.targets_length, vocab, mask_id=228)
      mesh = partitioning.make_mesh(1)
      sharding = partitioning.batch_sharding(mesh)
      tx = trainer.make_optimizer(config)
      manager = checkpointing.make_manager(config.model_dir)
      writer = metrics_io.MetricsWriter(config.model_dir)
      with partitioning.logical_context(mesh):
        state = trainer.init_state(stage_defs['hybrid'], tx, jax.random.PRNGKey(1), batch, mesh)
        state, _, _ = trainer.train_loop(
            state, stage_at=lambda s: stage_defs[config.stage_at(s)],
            switch=lambda state, stage: trainer.switch_to_sc(state, tx), cadence=trainer.Cadence.of(config),
            batch_size=2, tx=tx, base_rng=jax.random.PRNGKey(0),
            next_batch=lambda: trainer.to_global(batch, sharding), data_iterator=None, batch_sharding=sharding,
            manager=manager, writer=writer, evaluate=lambda stage, params: {{}},
            log_extra=lambda stage, s: {{'stage': stage.name}}, eval_first=False)
      writer.close()
      records = metrics_io.read_records(writer.path)
      print(json.dumps({{'stages': [r['stage'] for r in records], 'steps': manager.all_steps(),
                        'params': sorted(state.params), 'tf': sys.modules.get('tensorflow') is not None,
                        'losses': [r['train/loss'] for r in records]}}))
  ''', tmp_path)
  assert result['stages'] == ['hybrid', 'hybrid', 'sc'] and result['steps'] == [3] and not result['tf']
  assert result['params'] == ['decoder', 'encoder', 'token_embedder']
  assert all(loss > 0 for loss in result['losses'])
