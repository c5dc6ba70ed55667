"""Fine-tuning has a pulse: the real loop on a tiny SeqIO task and a tiny T5; start checkpoints; exact resume."""
import dataclasses
import json
import os

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import seqio
import seqio.test_utils
import tensorflow as tf

from spactor import checkpointing, checkpoint_io, cli, finetune, finetune_demo, finetune_eval, input_pipeline
from spactor import partitioning
from spactor import config as config_lib
from spactor import model as model_lib
from spactor import vocab as vocab_lib

TASK = 'spactor_finetune_test_task'
WORDS = ('a', 'b', 'c', 'd', 'e')


def exact_match(targets, predictions):
  return {'accuracy': 100.0 * float(np.mean([t == p for t, p in zip(targets, predictions)]))}


def mean_log_likelihood(targets, scores):
  del targets
  return {'log_likelihood': float(np.mean(scores))}


def _dataset_fn(split, shuffle_files, seed=None):
  """Rows of random letters; the target says whether 'a' is among them (learnable, not needed here)."""
  rng = np.random.default_rng({'train': 0, 'validation': 1}[split])
  size = {'train': 40, 'validation': 6}[split]
  texts = [' '.join(rng.choice(WORDS, size=int(rng.integers(2, 6)))) for _ in range(size)]
  ds = tf.data.Dataset.from_tensor_slices({'inputs': texts, 'targets': ['yes' if 'a' in t.split() else 'no'
                                                                        for t in texts]})
  return ds.shuffle(40, seed=seed) if shuffle_files else ds


@pytest.fixture(scope='module')
def task(tiny_vocab):
  if TASK in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(TASK)
  features = {k: seqio.Feature(tiny_vocab, add_eos=True) for k in ('inputs', 'targets')}
  seqio.TaskRegistry.add(
      TASK, source=seqio.FunctionDataSource(_dataset_fn, splits=('train', 'validation')), output_features=features,
      preprocessors=[seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
                     seqio.preprocessors.append_eos_after_trim],
      metric_fns=[exact_match, mean_log_likelihood])
  yield TASK
  seqio.TaskRegistry.remove(TASK)


def tiny_t5(vocab_size=128):
  return config_lib.T5Config(vocab_size=vocab_size, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                             num_encoder_layers=1, num_decoder_layers=1)


def _config(model_dir, init=None, steps=4, **overrides):
  return finetune.FinetuneConfig(
      model_dir=str(model_dir), task=TASK, init_checkpoint=init, inputs_length=16, targets_length=4,
      model=tiny_t5(), total_steps=steps, batch_size=4, learning_rate=1e-2, log_every=1, eval_every=2,
      checkpoint_every=2, **{'best_metric': 'log_likelihood', 'best_mode': 'min', **overrides})


def _records(model_dir):
  return [json.loads(line) for line in open(os.path.join(model_dir, 'metrics.jsonl'))]


def _tensorboard_tags(model_dir) -> set[str]:
  events = [os.path.join(model_dir, 'tb', name) for name in os.listdir(os.path.join(model_dir, 'tb'))]
  return {v.tag for path in events for e in tf.compat.v1.train.summary_iterator(path) for v in e.summary.value}


def _without_timing(record):
  return {k: v for k, v in record.items() if k not in ('seqs_per_second',)}


class Killed(Exception):
  """Stands for SIGKILL: the run stops where it is, with no clean-up."""


def test_demo_finetunes_both_starts_keeps_the_best_and_a_killed_run_resumes_exactly(task, tmp_path, monkeypatch,
                                                                                      capsys):
  """make demo-downstream's code path on tiny settings (both starts, a table, results.json, finished runs skipped),
  and exact resume: a run killed in step 4 and started again logs what the demo's uninterrupted one did."""
  module = model_lib.SpacTor(tiny_t5())
  tokens = jnp.ones((1, 8), jnp.int32)
  params = jax.jit(module.init)(jax.random.PRNGKey(5), tokens, tokens, tokens)['params']
  state = checkpointing.TrainState(step=jnp.array(9, jnp.int32), params=params, opt_state=())
  checkpointing.save(checkpointing.make_manager(str(tmp_path / 'demo')), state, None, {'stage': 'sc', 'step': 9})
  reader = input_pipeline.batch_reader

  def killed_at_step_4(iterator, sharding):  # a run killed in its 4th step, after the step-2 checkpoint
    next_batch, calls = reader(iterator, sharding), iter(range(4))

    def next_or_killed():
      if next(calls) == 3:
        raise Killed()
      return next_batch()
    return next_or_killed

  monkeypatch.setattr(input_pipeline, 'batch_reader', killed_at_step_4)
  with pytest.raises(Killed):
    finetune.run(_config(tmp_path / 'killed'))
  monkeypatch.undo()
  assert os.listdir(tmp_path / 'killed' / 'checkpoints') == ['2'] and _records(tmp_path / 'killed')[-1]['step'] == 3

  config = _config(tmp_path / 'downstream', init=str(tmp_path / 'demo'))
  results = finetune_demo.run_demo(config)
  assert set(results['runs']) == {'pretrained', 'scratch'}
  assert results['runs']['pretrained']['init_checkpoint'] == str(tmp_path / 'demo')
  assert results['runs']['scratch']['init_checkpoint'] is None
  for run in results['runs'].values():
    assert set(run['final']) == {f'{TASK}/accuracy', f'{TASK}/log_likelihood'}
    # The best by BEST_METRIC (here the lowest likelihood: the untrained model) is kept, not the latest.
    assert run['best'] == {'step': 0, 'metric': f'{TASK}/log_likelihood', 'value': run['first'][run['best']['metric']]}
    assert run['final'][f'{TASK}/log_likelihood'] > run['first'][f'{TASK}/log_likelihood']  # it learns
  assert results['runs']['pretrained']['final'] != results['runs']['scratch']['final']  # different starts
  assert json.load(open(tmp_path / 'downstream' / 'results.json')) == results
  assert (results['task'], results['eval_split'], results['total_steps']) == (TASK, 'validation', 4)
  assert 'pretrained' in capsys.readouterr().out
  scratch_dir = tmp_path / 'downstream' / 'scratch'
  records = _records(scratch_dir)
  assert [r['step'] for r in records if f'eval/{TASK}/accuracy' in r] == [0, 2, 4]
  assert os.listdir(scratch_dir / 'best' / 'checkpoints') == ['0']
  assert _tensorboard_tags(scratch_dir) >= {f'eval/{TASK}/accuracy', f'eval/{TASK}/log_likelihood', 'train/loss'}

  resumed = finetune.run(_config(tmp_path / 'killed'))
  later = lambda rs: [_without_timing(r) for r in rs if r['step'] > 2]
  assert later(_records(tmp_path / 'killed')) == later(records)
  straight = json.load(open(scratch_dir / 'summary.json'))
  assert resumed['best_eval'] == straight['best_eval'] and resumed['final_eval'] == straight['final_eval']
  best = lambda d: checkpoint_io.load_params(str(d / 'best'), tiny_t5()).params
  jax.tree.map(np.testing.assert_array_equal, best(tmp_path / 'killed'), best(scratch_dir))
  evaluated = finetune.run(_config(tmp_path / 'evaluated', init=str(scratch_dir / 'best'), steps=0))  # eval only
  assert evaluated['final_eval'] == straight['best_eval'] and not os.listdir(tmp_path / 'evaluated' / 'checkpoints')
  assert not os.path.exists(tmp_path / 'evaluated' / 'best') and evaluated['best_checkpoint'] is None  # no copy

  monkeypatch.setattr(finetune, 'run', lambda config: pytest.fail(f'{config.model_dir} was trained again'))
  assert finetune_demo.run_demo(config) == results
  with pytest.raises(ValueError, match='INIT_CHECKPOINT'):
    finetune_demo.run_demo(dataclasses.replace(config, init_checkpoint=None))


def test_start_from_a_stage_1_checkpoint_drops_the_generator_and_rtd_head(task, tmp_path):
  t5 = tiny_t5()
  full = model_lib.SpacTor(t5, config_lib.GeneratorConfig(num_layers=1, mlp_dim=16), config_lib.RTDHeadConfig(16))
  tokens = jnp.ones((1, 8), jnp.int32)
  params = jax.jit(lambda: full.init(jax.random.PRNGKey(1), tokens, tokens, tokens,
                                     method=model_lib.SpacTor.init_all))()['params']
  state = checkpointing.TrainState(step=jnp.array(3, jnp.int32), params=params,
                                   opt_state=optax.adafactor(1e-3).init(params))
  checkpointing.save(checkpointing.make_manager(str(tmp_path / 'pre')), state, None, {'stage': 'hybrid', 'step': 3})
  config = _config(tmp_path / 'ft', init=str(tmp_path / 'pre'))
  loaded, source = finetune.init_params(config, model_lib.SpacTor(t5), partitioning.make_mesh(1))
  assert set(loaded) == {'token_embedder', 'encoder', 'decoder'} and source.step == 3
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(loaded), {k: params[k] for k in loaded})


def test_bad_input_is_named(task, tmp_path):
  with pytest.raises(ValueError, match='not a registered SeqIO task'):
    finetune.run(dataclasses.replace(_config(tmp_path / 'a'), task='no_such_task'))
  with pytest.raises(ValueError, match='must differ'):
    _config(tmp_path / 'a', init=str(tmp_path / 'a'))
  with pytest.raises(ValueError, match='BEST_MODE'):
    _config(tmp_path / 'a', best_mode='largest')
  with pytest.raises(ValueError, match="'f1' is not a metric of this evaluation.*accuracy"):
    finetune_eval.resolve_metric('f1', {'t/accuracy': 1.0, 't/log_likelihood': 0.0})
  with pytest.raises(ValueError, match='does not exist'):
    finetune.run(_config(tmp_path / 'b', init=str(tmp_path / 'missing')))
  assert not os.path.exists(tmp_path / 'b' / 'metrics.jsonl')


def test_the_command_line_names_a_bad_setting_in_one_paragraph(tmp_path, monkeypatch):
  monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  model_dir = tmp_path / 'run'
  argv = ['--gin_file=gin/finetune/rt_polarity.gin', '--gin_file=gin/finetune/cpu.gin',
          f'--gin.MODEL_DIR={str(model_dir)!r}', '--gin.INIT_CHECKPOINT=None']
  try:
    for binding, message in (('--gin.BEAM_SIZE=0', 'beam_size must be a positive int'),
                             ('--gin.BEAM_SIZ=2', 'did you mean BEAM_SIZE?')):
      with pytest.raises(SystemExit) as exit_info:
        finetune.main([*argv, binding])
      assert message in str(exit_info.value) and '\n' not in str(exit_info.value)
  finally:
    gin.clear_config()
  assert not model_dir.exists()


def test_a_held_or_unusable_model_dir_stops_both_entry_points_before_anything_is_written(tmp_path, monkeypatch):
  monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  not_a_dir = tmp_path / 'notes.txt'
  not_a_dir.write_text('mine')
  argv = lambda model_dir: ['--gin_file=gin/finetune/demo.gin', f'--gin.MODEL_DIR={str(model_dir)!r}']
  try:
    for main in (finetune.main, finetune_demo.main):
      with cli.hold_model_dir(str(tmp_path / 'held')):  # another run holds it
        with pytest.raises(SystemExit, match='in use') as exit_info:
          main(argv(tmp_path / 'held'))
      assert '\n' not in str(exit_info.value) and os.listdir(tmp_path / 'held') == ['.lock']
      with pytest.raises(SystemExit, match='not a directory'):
        main(argv(not_a_dir))
      assert not_a_dir.read_text() == 'mine'
  finally:
    gin.clear_config()


REQUIRED = ["MODEL_DIR = '/tmp/unused'", 'INIT_CHECKPOINT = None']


@pytest.mark.parametrize('files, bindings', [
    (['gin/finetune/finetune.gin'], REQUIRED + ["TASK = 'glue_rte_v2'"]),
    (['gin/finetune/rt_polarity.gin'], REQUIRED),
    (['gin/finetune/rt_polarity.gin', 'gin/finetune/cpu.gin'], REQUIRED),
    (['gin/finetune/demo.gin'], []),
])
def test_every_finetune_gin_file_builds_its_config(files, bindings, monkeypatch):
  monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  try:
    cli.parse_gin(files, bindings, [])
    config = finetune.FinetuneConfig()
  finally:
    gin.clear_config()
  if len(files) == 1 and files[0] != 'gin/finetune/demo.gin':  # the paper's fine-tuning settings, T5-Base
    assert (config.learning_rate, config.dropout_rate, config.batch_size, config.beam_size) == (1e-3, 0.1, 128, 1)
    assert config.model.emb_dim == 768 and config.total_steps == 262144
  else:  # the CPU layer: the tiny model of `make demo`
    assert (config.model.emb_dim, config.batch_size, config.task) == (128, 32, 'spactor_rt_polarity')


def test_predictions_stop_at_eos_and_pad_rows_are_dropped(task, tiny_vocab, tmp_path):
  module = model_lib.SpacTor(finetune.model_config(_config(tmp_path), tiny_vocab))  # the runs' (compiled) model
  tokens = jnp.ones((1, 8), jnp.int32)
  params = jax.jit(module.init)(jax.random.PRNGKey(0), tokens, tokens, tokens)['params']
  evaluator = finetune_eval.make_evaluator(TASK, 'validation', {'inputs': 16, 'targets': 4}, None)
  dataset = evaluator._cached_model_datasets[TASK]  # noqa: SLF001 (what seqio hands its predict_fn)
  predictions = finetune_eval.make_predict_fn(module, lambda: params, 4, 4)(dataset)
  assert sorted(i for i, _ in predictions) == list(range(6))  # 6 examples in batches of 4: padding dropped
  for _, p in predictions:  # full rows (seqio stacks them): pad only after EOS
    end = p.index(1) + 1 if 1 in p else len(p)
    assert len(p) == 4 and 0 not in p[:end] and set(p[end:]) <= {0}
  scores = finetune_eval.make_score_fn(module, lambda: params, 4)(dataset)
  assert sorted(i for i, _ in scores) == list(range(6)) and all(s < 0 for _, s in scores)
  # The padded last batch scores its examples as one full batch of all six does (predictions share the padding).
  np.testing.assert_allclose(sorted(finetune_eval.make_score_fn(module, lambda: params, 6)(dataset)), sorted(scores),
                             rtol=1e-5)


def test_dropout_reaches_the_model_in_training_and_is_off_in_evaluation(task, tiny_vocab, tmp_path):
  """DROPOUT_RATE (0.1 by default) changes the training loss with the step's RNG; scores ignore it (decodes use
  the same enable_dropout=False: tests/test_beam_search.py compares them with teacher forcing)."""
  config = _config(tmp_path)
  assert config.dropout_rate == 0.1
  stage = finetune.make_stage(config, finetune.model_config(config, tiny_vocab))
  no_dropout = dataclasses.replace(config, dropout_rate=0.0)
  plain = finetune.make_stage(no_dropout, finetune.model_config(no_dropout, tiny_vocab))
  assert stage.module.config.dropout_rate == 0.1
  targets = jnp.asarray(np.random.default_rng(0).integers(2, 100, size=(2, 4)), jnp.int32)
  batch = {'encoder_input_tokens': jnp.asarray(np.random.default_rng(1).integers(2, 100, size=(2, 8)), jnp.int32),
           'decoder_input_tokens': jnp.pad(targets, ((0, 0), (1, 0)))[:, :4], 'decoder_target_tokens': targets,
           'decoder_loss_weights': jnp.ones((2, 4), jnp.int32)}
  params = jax.jit(stage.module.init)(jax.random.PRNGKey(0), batch['encoder_input_tokens'],
                                     batch['decoder_input_tokens'], targets)['params']
  both = lambda s, seed, train: s.loss_fn(s.module, params, batch, jax.random.PRNGKey(seed), train)[0]
  on_1, on_2, off, plain_on, scores, plain_scores = jax.device_get(jax.jit(lambda: (
      both(stage, 1, True), both(stage, 2, True), both(stage, 1, False), both(plain, 2, True),
      finetune_eval.target_log_likelihood(stage.module, params, batch),
      finetune_eval.target_log_likelihood(plain.module, params, batch)))())
  assert on_1 != on_2 and abs(on_1 - off) > 1e-3  # what train_step computes (enable_dropout=True): dropout is on
  assert off == plain_on  # off when disabled; a rate of 0 is no dropout
  np.testing.assert_array_equal(scores, plain_scores)  # evaluation's scores ignore the rate


def test_best_checkpoint_keeps_the_best_and_a_restart_redoes_only_the_steps_after_its_checkpoint(tmp_path):
  """The kept step survives a restart from a checkpoint at or after it; one after the restart's checkpoint is
  dropped (its steps are trained and evaluated again, to the same params by exact resume) and offered again."""
  params = lambda value: {'w': np.full((2,), value, np.float32)}
  best = finetune_eval.BestCheckpoint(str(tmp_path), 't/accuracy', 'max')
  for step, value in ((0, 1.0), (2, 3.0), (4, 2.0)):
    best.offer(step, params(value), {'t/accuracy': value, 't/loss': -value})
  assert best.best_step() == 2 and best.manager.all_steps() == [2]
  best.forget_after(2)  # restarted from the step-2 checkpoint
  assert best.manager.all_steps() == [2]
  best.forget_after(0)  # restarted from step 0: step 2 comes again
  assert best.best_step() is None
  best.offer(2, params(3.0), {'t/accuracy': 3.0, 't/loss': -3.0})
  kept = best.manager.restore(2, args=ocp.args.Composite(state=ocp.args.StandardRestore()))['state']
  best.close()
  assert best.manager.all_steps() == [2] and np.asarray(kept['params']['w']).tolist() == [3.0, 3.0]
