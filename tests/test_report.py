"""The comparison report (spactor.report) on tiny synthetic runs with hand-computed crossings, savings and spreads,
and the t5x event-file reader on event files written here with tf.summary."""
import json
import math
import os
import statistics

import pytest

from spactor import flops, report, report_tables, run_records, span_lengths
from spactor import config as config_lib

STEPS = [0, 100, 200, 300, 400]


def write_run(directory, losses, tau, gflops, seed=None, summary=True, diagnostics=None, total_steps=400):
  """A spactor.train-shaped run dir: eval records (with cumulative FLOPs), train records, summary.json."""
  os.makedirs(directory, exist_ok=True)
  hybrid_steps = 400 if tau is None else tau
  stage = lambda step: 'sc' if tau == 0 or step > hybrid_steps else 'hybrid'  # step τ's records are stage 1's
  cumulative = lambda s: 1e9 * (min(s, hybrid_steps) * gflops.get('hybrid', 0)
                                + max(0, s - hybrid_steps) * gflops.get('sc', 0))
  with open(os.path.join(directory, 'metrics.jsonl'), 'w') as f:
    for step, loss in zip(STEPS, losses):
      if step:
        f.write(json.dumps({'step': step, 'stage': stage(step), 'cumulative_flops': cumulative(step),
                            'gflops_per_step': gflops[stage(step)], 'train/loss': loss + 0.1}) + '\n')
      record = {'step': step, 'stage': stage(step), 'cumulative_flops': cumulative(step), 'eval/sc_clean_loss': loss}
      if diagnostics and stage(step) == 'hybrid':
        record.update({f'eval/{k}': v[STEPS.index(step)] for k, v in diagnostics.items()})
      f.write(json.dumps(record) + '\n')
  if summary:
    stages = [{'stage': name, 'gflops_per_step': value} for name, value in gflops.items()]
    with open(os.path.join(directory, 'summary.json'), 'w') as f:
      json.dump({'tau': tau, 'total_steps': total_steps, 'preempted': False, 'seed': seed, 'stages': stages}, f)
  return str(directory)


BASE = {'sc': 10.0}
HYBRID = {'hybrid': 15.0, 'sc': 10.0}


@pytest.fixture
def study(tmp_path):
  """Baseline (2 seeds, finals 4.0 and 4.2: target 4.1), SpacTor τ=200 (2 seeds), τ=∞ without summary.json."""
  diag = {'gen_accuracy': [0.0, 0.1, 0.2, 0.3, 0.4], 'replaced': [1.0, 0.9, 0.8, 0.7, 0.6],
          'rtd_recall': [0.0, 0.2, 0.4, 0.5, 0.6], 'rtd_precision': [0.0, 0.5, 0.6, 0.7, 0.8]}
  return [
      'SC=' + write_run(tmp_path / 'sc_s0', [9, 6, 5, 4.5, 4.0], 0, BASE, seed=0),
      'SC=' + write_run(tmp_path / 'sc_s1', [9, 6, 5, 4.4, 4.2], 0, BASE, seed=1),
      'T200=' + write_run(tmp_path / 't_s0', [9, 5.8, 4.9, 4.3, 3.9], 200, HYBRID, seed=0, diagnostics=diag),
      'T200=' + write_run(tmp_path / 't_s1', [9, 5.9, 5.0, 4.3, 4.05], 200, HYBRID, seed=1, diagnostics=diag),
      write_run(tmp_path / 'inf_seed7', [9, 5.5, 4.6, 4.15, 4.12], None, {'hybrid': 15.0}, summary=False),
  ]


def test_crossing_rule():
  assert report_tables.crossing_step([0, 100, 200], [5.0, 4.0, 3.0], 3.5) == 150.0
  assert report_tables.crossing_step([0, 100, 200], [5.0, 4.0, 3.0], 6.0) == 0.0  # already below at the start
  assert report_tables.crossing_step([0, 100, 200], [5.0, 4.0, 3.0], 2.9) is None
  # The first crossing counts, even when the curve goes up again.
  assert report_tables.crossing_step([0, 100, 200, 300], [5.0, 3.0, 4.0, 2.0], 4.0) == 50.0


def test_report_numbers(study):
  runs = report.load_runs(study, run_records.T5xShape())
  table = report.build(runs)['comparison']
  assert table['baseline'] == 'SC' and table['target_loss'] == pytest.approx(4.1)
  assert table['baseline_steps'] == 400 and table['baseline_flops'] == pytest.approx(400 * 10e9)
  rows = {(r['label'], r['seed']): r for r in table['runs']}
  # seed 0: 300 + (4.3 - 4.1) / (4.3 - 3.9) * 100 = 350; FLOPs 200·15 + 150·10 GFLOPs.
  assert rows['T200', 0]['steps_to_target'] == pytest.approx(350.0)
  assert rows['T200', 0]['flops_to_target'] == pytest.approx(4.5e12)
  assert rows['T200', 0]['step_saving'] == pytest.approx(1 - 350 / 400)
  assert rows['T200', 0]['flops_saving'] == pytest.approx(1 - 4.5e12 / 4e12)
  # seed 1: 300 + 0.2 / 0.25 · 100 = 380; 200·15 + 180·10 GFLOPs.
  assert rows['T200', 1]['steps_to_target'] == pytest.approx(380.0)
  assert rows['T200', 1]['flops_to_target'] == pytest.approx(4.8e12)
  assert rows['SC', 0]['steps_to_target'] == pytest.approx(380.0)  # 300 + 0.4 / 0.5 · 100
  assert rows['SC', 1]['steps_to_target'] is None
  # τ=∞ without summary.json: τ read as None from its stages, seed from the directory name; never reaches 4.1.
  inf = rows['SpacTor(τ=∞)', 7]
  assert inf['tau'] is None and inf['steps_to_target'] is None and inf['total_flops'] == pytest.approx(400 * 15e9)
  groups = {g['label']: g for g in table['groups']}
  assert groups['T200']['reached'] == 2 and groups['T200']['seeds'] == [0, 1]
  savings = [1 - 350 / 400, 1 - 380 / 400]
  assert groups['T200']['step_saving']['mean'] == pytest.approx(statistics.fmean(savings))
  assert groups['T200']['step_saving']['std'] == pytest.approx(statistics.stdev(savings))
  assert groups['T200']['final_loss']['mean'] == pytest.approx(3.975)
  assert groups['SC']['reached'] == 1 and groups['SpacTor(τ=∞)']['reached'] == 0


def test_figure_4b_pairs_seeds_and_stage1_diagnostics(study):
  runs = report.load_runs(study, run_records.T5xShape())
  built = report.build(runs, trend_start=100)
  gaps = {(e['label'], e['seed']): e for e in built['figure_4b']}
  assert gaps['T200', 1]['baseline_seed'] == 1
  assert gaps['T200', 1]['gaps'] == pytest.approx([0.0, -0.1, 0.0, -0.1, -0.15])
  assert gaps['T200', 1]['trend']['num_points'] == 4 and gaps['T200', 1]['trend']['start_step'] == 100
  assert gaps['SpacTor(τ=∞)', 7]['baseline_seed'] == 0  # no seed-7 baseline: the first one
  stage1 = {g['label']: g for g in built['stage1_groups']}
  assert set(stage1) == {'T200'}  # the only runs with generator metrics
  assert stage1['T200']['rtd_recall']['mean'] == pytest.approx(0.4)  # last hybrid evaluation: step 200


def test_tau_from_records_without_summary(tmp_path):
  path = write_run(tmp_path / 'running', [9, 5.8, 4.9, 4.3, 4.0], 150, HYBRID, summary=False)
  assert run_records.read_run(path).tau == 150  # solved from an SC record's cumulative FLOPs


def test_cli_writes_markdown_json_and_figures(study, tmp_path, capsys):
  finetune = os.path.join(study[2].split('=', 1)[1], 'finetune_rt')
  os.makedirs(finetune)
  with open(os.path.join(finetune, 'summary.json'), 'w') as f:
    json.dump({'task': 'spactor_rt_polarity', 'final_eval': {'step': 40, 'spactor_rt_polarity/accuracy': 0.7}}, f)
  extra = tmp_path / 'downstream.json'
  extra.write_text(json.dumps({study[3].split('=', 1)[1]: {'spactor_rt_polarity': {'accuracy': 0.6}}}))
  out = tmp_path / 'report'
  report.main(study + ['--out', str(out), '--downstream', str(extra)])
  written = json.loads((out / 'report.json').read_text())
  accuracy = written['downstream']['groups'][0]['results']['spactor_rt_polarity/accuracy']
  assert accuracy['mean'] == pytest.approx(0.65) and accuracy['n'] == 2
  md = (out / 'report.md').read_text()
  assert '| T200 | 200 | 0, 1 | 2/2 | 3.975 ± 0.1061 (n=2) | 365.0 ± 21.2 (n=2) |' in md
  assert '| -16.2% ± 5.3% (n=2) |' in md  # FLOPs saving: mean of -12.5% and -20%
  assert '0.65 ± 0.07071 (n=2)' in md
  for name in report.FIGURES.values():
    assert (out / name).stat().st_size > 1000
  assert 'written:' in capsys.readouterr().out


def test_bad_input_is_one_paragraph_and_writes_nothing(study, tmp_path):
  out = tmp_path / 'nothing'
  with pytest.raises(SystemExit, match='error: run directory .*does not exist'):
    report.main(study + [str(tmp_path / 'missing'), '--out', str(out)])
  with pytest.raises(SystemExit, match='no SC baseline'):
    report.main(study[2:] + ['--out', str(out)])
  assert not out.exists()


def write_events(directory, tag, points):
  import tensorflow as tf
  writer = tf.summary.create_file_writer(str(directory))
  with writer.as_default():
    for step, value in points:
      tf.summary.scalar(tag, value, step=step)
  writer.close()


def test_t5x_event_files(tmp_path):
  """A launch_tpu.sh experiment (tau20/stage1, stage2) and a baseline, read from TensorBoard event files."""
  exp = tmp_path / 'tau20'
  write_events(exp / 'stage1' / 'train', 'loss', [(10, 80.0), (20, 70.0)])
  write_events(exp / 'stage1' / 'training_eval' / 'spactor_hybrid_sotu', 'sc_clean_loss', [(10, 6.5), (20, 6.0)])
  write_events(exp / 'stage1' / 'training_eval' / 'spactor_hybrid_sotu', 'rtd_recall', [(10, 0.1), (20, 0.3)])
  write_events(exp / 'stage2' / 'training_eval' / 'spactor_sc_sotu', 'sc_loss', [(30, 5.5), (40, 5.0)])
  base = tmp_path / 'sc_baseline'
  write_events(base / 'training_eval' / 'spactor_sc_sotu', 'sc_loss', [(10, 6.5), (20, 6.25), (30, 5.75), (40, 5.25)])
  shape = run_records.T5xShape(size='tiny', batch_size=4, inputs_length=64, vocab_size=100)
  run = run_records.read_run(str(exp), t5x_shape=shape)
  assert run.kind == 't5x' and run.tau == 20 and run.label == 'SpacTor(τ=20)'
  assert run.curve() == ([10, 20, 30, 40], [6.5, 6.0, 5.5, 5.0])
  assert run.curve('eval/rtd_recall') == ([10, 20], [pytest.approx(0.1), pytest.approx(0.3)])
  assert run.train[20]['train/loss'] == 70.0
  t5, generator, rtd_head = config_lib.preset('tiny', vocab_size=100)
  lengths = flops.Lengths(64, span_lengths.random_spans_helper(64, 0.15, 3.0)[1])
  sc = flops.sc_step_flops(t5, lengths, 4)
  hybrid = flops.hybrid_step_flops(t5, generator, rtd_head, lengths, 4,
                                   logits_tokens=span_lengths.max_mlm_positions(64, 0.15))
  assert run.flops_at(30) == pytest.approx(20 * hybrid + 10 * sc)
  baseline = run_records.read_run(str(base), t5x_shape=shape)
  assert baseline.tau == 0 and baseline.curve()[1][-1] == 5.25  # float32 in the event file: exact here
  table = report_tables.comparison([baseline, run])
  spactor_row = table['runs'][1]
  assert spactor_row['steps_to_target'] == pytest.approx(35.0)  # 5.5 -> 5.0 crosses 5.25 half-way
  assert spactor_row['flops_to_target'] == pytest.approx(20 * hybrid + 15 * sc)
  assert math.isclose(table['baseline_flops'], 40 * sc)


def test_demo_table_shows_the_stage_1_diagnostics():
  """The run's per-stage table (metrics_io.summary_table, printed by the trainer) carries Section 3.2's metrics."""
  from spactor import metrics_io
  records = [{'step': 10, 'stage': 'hybrid', 'train/loss': 60.0},
             {'step': 10, 'stage': 'hybrid', 'eval/sc_clean_loss': 5.0, 'eval/gen_accuracy': 0.25,
              'eval/replaced': 0.75, 'eval/rtd_recall': 0.5, 'eval/rtd_precision': 0.125},
             {'step': 20, 'stage': 'sc', 'train/loss': 4.5}, {'step': 20, 'stage': 'sc', 'eval/sc_clean_loss': 4.0}]
  hybrid, sc = metrics_io.stage_summary(records, 'hybrid'), metrics_io.stage_summary(records, 'sc')
  assert (hybrid['gen_acc'], hybrid['replaced'], hybrid['rtd_recall'], hybrid['rtd_prec']) == (0.25, 0.75, 0.5, 0.125)
  assert 'rtd_recall' not in sc
  table = metrics_io.summary_table([{'stage': 'hybrid', **hybrid}, {'stage': 'sc', **sc}])
  header, _, hybrid_row, sc_row = table.split('\n')
  assert header.split()[5:9] == ['gen_acc', 'replaced', 'rtd_recall', 'rtd_prec']
  assert hybrid_row.split()[5:9] == ['0.250', '0.750', '0.500', '0.125'] and sc_row.split()[5:9] == ['-'] * 4
