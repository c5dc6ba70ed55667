"""The benchmark scripts have a pulse: each main runs on a minuscule config and returns well-formed rows.

No timing is asserted anywhere (the figures live in docs/benchmarks.md); only shapes, finiteness and the facts
that do not depend on speed (e.g. the cached and uncached decoders write the same tokens).
"""
import json
import math
import os

import numpy as np
import pytest

from bench import common, data_pipeline, hybrid_overhead, memory, peer_torch, remat, ssr_generation
from spactor import config as config_lib, trainer

TINY_VOCAB = '256'  # model vocab rows of the synthetic vocabulary: keeps compiles short


def test_synthetic_batch_has_the_hybrid_features_of_real_data():
  vocab = common.SyntheticVocab(vocab_size=228)
  batch = common.synthetic_batch(3, 32, 8, vocab, mask_id=228)
  assert {k: v.shape for k, v in batch.items()} == {
      'encoder_input_tokens': (3, 32), 'encoder_clean_tokens': (3, 32), 'encoder_mlm_mask': (3, 32),
      'decoder_target_tokens': (3, 8), 'decoder_input_tokens': (3, 8), 'decoder_loss_weights': (3, 8)}
  clean, mask = batch['encoder_clean_tokens'], batch['encoder_mlm_mask']
  assert (clean[:, -1] == 1).all() and (batch['decoder_target_tokens'][:, -1] == 1).all()
  assert (clean >= 128).any()  # sentinels where span corruption puts them
  ordinary = (clean > 1) & (clean < 128)
  np.testing.assert_array_equal(mask.sum(1), np.round(0.15 * ordinary.sum(1)))
  assert (batch['encoder_input_tokens'][mask == 1] == 228).all()
  assert (mask[~ordinary] == 0).all()
  np.testing.assert_array_equal(batch['decoder_input_tokens'][:, 1:], batch['decoder_target_tokens'][:, :-1])


def test_table_formats_markdown():
  text = common.table([{'a': 1.23456, 'b': 'x'}, {'a': 12345.6, 'b': float('nan')}])
  assert text.splitlines() == ['| a      | b   |', '| ------ | --- |', '| 1.235  | x   |', '| 12,346 | n/a |']


def test_hybrid_overhead_main(tmp_path):
  path = tmp_path / 'hybrid.json'
  rows = hybrid_overhead.main([f'--configs=tiny:2:16:{TINY_VOCAB}', '--reps=1', '--steps=1', f'--json={path}'])
  (row,) = rows
  assert row['vocab'] == 256 and row['batch'] == 2 and row['inputs'] == 16
  for key in ('measured_ratio', 'flops_ratio', 'xla_flops_ratio', 'stage1_ms', 'stage2_ms'):
    assert math.isfinite(row[key]) and row[key] > 0, key
  assert row['flops_ratio'] > 1  # stage 1 adds the generator and the RTD head
  with common.preset_scope('tiny'):  # the FLOPs are the trainer's own count
    config = trainer.TrainConfig(model_dir='x', total_steps=2, tau=1, batch_size=2, inputs_length=16)
  stage_defs = trainer.build_stages(config, common.vocab_sizes(common.SyntheticVocab(vocab_size=228)))
  assert row['stage1_gflops'] == stage_defs['hybrid'].flops_per_step / 1e9
  assert row['stage2_gflops'] == stage_defs['sc'].flops_per_step / 1e9
  assert json.loads(path.read_text())['rows'][0]['preset'] == row['preset']


def test_parse_configs():
  assert hybrid_overhead.parse_configs('tiny:32:128,small:16:128:32128', 4224) == [
      ('tiny', 32, 128, 4224), ('small', 16, 128, 32128)]


def test_peer_shapes_are_the_presets():
  for size in ('tiny', 'small', 'base'):
    t5 = config_lib.preset(size).t5
    assert peer_torch.t5_shapes(size) == dict(
        d_model=t5.emb_dim, num_heads=t5.num_heads, d_kv=t5.head_dim, d_ff=t5.mlp_dim,
        num_layers=t5.num_encoder_layers, num_decoder_layers=t5.num_decoder_layers)


def test_peer_needs_its_own_interpreter(tmp_path):
  with pytest.raises(SystemExit, match='benchvenv'):
    peer_torch.TorchPeer(str(tmp_path / 'no-python'), {})


@pytest.mark.skipif(not os.path.exists(os.environ.get('SPACTOR_BENCH_PYTHON', '/nonexistent')),
                    reason='set SPACTOR_BENCH_PYTHON to a venv python with torch and transformers')
def test_peer_torch_main():
  (row,) = peer_torch.main([f'--configs=tiny:2:16:{TINY_VOCAB}', '--reps=1',
                            f'--torch_python={os.environ["SPACTOR_BENCH_PYTHON"]}'])
  assert row['spactor_steps_per_s'] > 0 and row['hf_torch_steps_per_s'] > 0
  assert math.isfinite(row['peer']['loss'])


def test_data_pipeline_main():
  rows = data_pipeline.main(['--batch=4', '--inputs_length=32', '--ssr_batch=4', '--ssr_inputs_length=64',
                             '--examples=16', '--warmup_batches=1', '--reps=1', '--skip_consumers'])
  assert [r['pipeline'] for r in rows] == ['hybrid', 'sc', 'ssr_masking']
  assert all(r['examples_per_s'] > 0 for r in rows)


def test_ssr_generation_cache_and_no_cache_agree():
  rows = ssr_generation.measure('tiny', batch_size=2, inputs_length=64, reps=1)
  assert [r['decoder'] for r in rows] == ['kv_cache', 'no_cache']
  assert all(r['same_tokens'] for r in rows)
  assert rows[0]['decoder_tokens'] == rows[1]['decoder_tokens'] > 0


def test_memory_step_process(tmp_path):
  path = tmp_path / 'memory.json'
  (row,) = memory.main(['--skip_demo', f'--steps=tiny:2:16:{TINY_VOCAB}:sc:full', '--runs=1', f'--json={path}'])
  assert 'remat full' in row['what']
  assert row['peak_rss_gib'] >= row['rss_after_imports_gib'] > 0
  assert row['train_state_gib'] > row['params_gib'] > 0
  assert path.exists()


def test_peer_configs_name_the_t5_version():
  assert peer_torch.parse_configs('base:64:512:32128,t5_1_1/base:8:128') == [
      ('t5_1_0', 'base', 64, 512, 32128), ('t5_1_1', 'base', 8, 128, None)]
  t5 = config_lib.preset('base', 't5_1_1').t5
  assert peer_torch.t5_shapes('base', 't5_1_1') == dict(
      d_model=t5.emb_dim, num_heads=t5.num_heads, d_kv=t5.head_dim, d_ff=t5.mlp_dim,
      num_layers=t5.num_encoder_layers, num_decoder_layers=t5.num_decoder_layers)


def test_peer_gpu_flags_are_checked_before_any_work(monkeypatch):
  monkeypatch.delenv('XLA_PYTHON_CLIENT_PREALLOCATE', raising=False)  # restored after the test
  with pytest.raises(SystemExit, match='jax has no GPU here'):
    peer_torch.main(['--device=gpu', '--dtype=bfloat16', f'--configs=micro:1:8:{TINY_VOCAB}'])
  assert os.environ['XLA_PYTHON_CLIENT_PREALLOCATE'] == 'false'  # JAX would leave the peer no GPU memory
  with pytest.raises(SystemExit, match='unknown splash.*plain'):
    peer_torch.main(['--attention_impl=plain,splash', f'--configs=micro:1:8:{TINY_VOCAB}'])
  with pytest.raises(SystemExit, match='remat_policy: unknown some.*minimal'):
    peer_torch.main(['--remat_policy=some', f'--configs=micro:1:8:{TINY_VOCAB}'])


BARE_PYTHON = '''#!/bin/sh
exec {python} -c "
import runpy, sys
for name in ('tensorflow', 'seqio', 'tensorflow_datasets'):
  sys.modules[name] = None  # as on an accelerator image without them
sys.argv = sys.argv[1:]
if sys.argv[0] == '-c':
  exec(sys.argv[1])
else:
  runpy.run_path(sys.argv[0], run_name='__main__')
" "$@"
'''


def test_gpu_suite_dry_run_on_cpu_without_tensorflow(tmp_path):
  """bench/gpu_suite.sh's command line on CPU tiny settings, TensorFlow and SeqIO unimportable: a row per
  attention implementation, the JSON written, MFU where a peak is known, our step with the remat policy asked."""
  import subprocess
  import sys
  bare = tmp_path / 'python'
  bare.write_text(BARE_PYTHON.format(python=sys.executable))
  bare.chmod(0o755)
  env = {**os.environ, 'PY': str(bare), 'OUT': str(tmp_path / 'out'), 'DEVICE': 'cpu', 'DTYPE': 'float32',
         'PEER': 'none', 'CONFIGS': f't5_1_1/micro:1:8:{TINY_VOCAB}', 'REMAT': 'minimal', 'JAX_PLATFORMS': 'cpu'}
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  done = subprocess.run(['bash', os.path.join(root, 'bench', 'gpu_suite.sh')], env=env, capture_output=True,
                        text=True, timeout=600)
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
  rows = json.loads((tmp_path / 'out' / 'peer_torch_gpu.json').read_text())['rows']
  assert [(r['model'], r['attention']) for r in rows] == [('micro (t5_1_1)', 'plain'), ('micro (t5_1_1)', 'dpa:xla')]
  for row in rows:
    assert row['error'] == '' and row['spactor_steps_per_s'] > 0 and row['spactor_compile_s'] > 0
    assert row['hf_mode'] == 'none' and math.isnan(row['hf_torch_steps_per_s']) and row['remat'] == 'minimal'
  assert '| micro (t5_1_1)' in (tmp_path / 'out' / 'peer_torch_gpu.txt').read_text()


def test_remat_keeps_fewer_activations_for_more_flops():
  """bench/remat.py on the micro preset: each stronger policy keeps fewer forward values and recomputes more."""
  rows = remat.main(['--size=micro', '--batch=2', '--inputs=32', '--vocab=256', '--stage=hybrid'])
  kept = [r['residual_gib'] for r in rows]
  flops = [r['xla_gflops'] for r in rows]
  assert [r['remat_policy'] for r in rows] == ['none', 'minimal', 'full']
  assert kept[0] > kept[1] > kept[2] > 0 and flops[0] < flops[1] < flops[2]
