"""t5x compatibility without t5x: the models' interface, their losses, decoding and scoring, and gin/t5x/.

The expected interface is copied from t5x's source at commit cc342d419ec3e3e9c4bf1df33c82330cafdc1e16
(t5x/models.py: BaseModel, EncoderDecoderModel; t5x/adafactor.py: standard_logical_factor_rules). With t5x
installed the gin files are parsed against t5x's own gin files; without it (CI) t5x's names are skipped and its
included files are empty stand-ins. t5x's binaries (`__main__.train` of `python -m t5x.train`, `__main__.evaluate`
of t5x.eval) are stood in by functions that return the arguments gin gives them.
"""
import glob
import inspect
import itertools
import os
import sys

import clu.metrics
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from spactor import config, model, objectives, preprocessors, t5x_gin, t5x_models, vocab
from spactor.feature_converters import SpacTorFeatureConverter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T5X_GIN = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, 'gin', 't5x', '**', '*.gin'),
                                                               recursive=True))

# t5x/models.py BaseModel (t5x commit cc342d4): method -> [(parameter, default)] after `self`; inspect.Parameter.empty
# marks a required one. A model may add parameters only after these, and only with defaults.
REQUIRED = inspect.Parameter.empty
BASE_MODEL_METHODS = {
    'loss_fn': [('params', REQUIRED), ('batch', REQUIRED), ('dropout_rng', REQUIRED)],
    'eval_fn': [('params', REQUIRED), ('batch', REQUIRED)],
    'predict_batch': [('params', REQUIRED), ('batch', REQUIRED), ('rng', None)],
    'predict_batch_with_aux': [('params', REQUIRED), ('batch', REQUIRED), ('rng', None)],
    'score_batch': [('params', REQUIRED), ('batch', REQUIRED), ('return_intermediates', False)],
    'get_initial_variables': [('rng', REQUIRED), ('input_shapes', REQUIRED), ('input_types', None)],
}
# t5x/adafactor.py standard_logical_factor_rules() (t5x commit cc342d4): every parameter axis must be one of these.
T5X_FACTOR_RULE_NAMES = {'vocab', 'embed', 'mlp', 'heads', 'kv', 'joined_kv', 'relpos_buckets', 'layers', 'stack',
                         'q_wi_fused', 'o_wo_fused', 'multiquery_heads', 'kv_fused', 'layer_norm_scale',
                         'mlp_activations'}
# t5x's names in gin/t5x/, skipped in CI (t5x's binaries are stood in: see `parse`).
T5X_NAMES = ['adafactor.Adafactor', 'adafactor.standard_logical_factor_rules', 'utils.RestoreCheckpointConfig',
             'utils.SaveCheckpointConfig']

B, L, T = 2, 24, 8


@pytest.fixture(scope='module')
def vocabulary(tmp_path_factory):
  """A 32-piece SentencePiece model with 100 extra ids: model vocab 256, [M] = 132."""
  words = ['union', 'state', 'congress', 'people', 'nation', 'year', 'law', 'peace', 'war', 'trade', 'money']
  lines = [' '.join(words[(i * 7 + j * 3) % len(words)] for j in range(12)) for i in range(200)]
  path = tmp_path_factory.mktemp('vocab') / 'tiny.model'
  path.write_bytes(vocab.train_sentencepiece(lines, 32))
  return vocab.load(str(path))


@pytest.fixture(scope='module')
def batch(vocabulary):
  """A hybrid batch (also a valid SC batch: the extra features are ignored by SCModel)."""
  rng = np.random.RandomState(0)
  clean = rng.randint(3, 32, (B, L)).astype(np.int32)
  clean[:, -3:] = 0
  clean[:, -4] = 1
  mlm_mask = ((rng.rand(B, L) < 0.3) & (clean > 1)).astype(np.int32)
  targets = rng.randint(3, 32, (B, T)).astype(np.int32)
  targets[:, -1] = 1
  return {
      'encoder_input_tokens': np.where(mlm_mask, vocab.mask_id(vocabulary), clean).astype(np.int32),
      'encoder_clean_tokens': clean, 'encoder_mlm_mask': mlm_mask,
      'decoder_input_tokens': np.concatenate([np.zeros((B, 1), np.int32), targets[:, :-1]], axis=1),
      'decoder_target_tokens': targets, 'decoder_loss_weights': np.ones((B, T), np.float32)}


# One layer everywhere: these tests check wiring, and compile time grows with depth.
SMALL = dict(emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64, num_encoder_layers=1, num_decoder_layers=1)


def make(cls, vocabulary, size=None, **kwargs):
  """cls over a SpacTor module of a preset size, or (size=None) a one-layer model."""
  vocab_size = vocab.model_vocab_size(vocabulary)
  if size is None:
    configs = config.SpacTorConfigs(config.T5Config(vocab_size=vocab_size, **SMALL),
                                    config.GeneratorConfig(num_layers=1, mlp_dim=32), config.RTDHeadConfig(mlp_dim=64))
  else:
    configs = config.preset(size, vocab_size=vocab_size)
  module = model.SpacTor(*configs) if cls is t5x_models.SpacTorModel else model.SpacTor(configs.t5)
  return cls(module, vocabulary, vocabulary, optimizer_def=None, **kwargs)


def init(m, batch):
  return m.get_initial_variables(jax.random.PRNGKey(0), {k: v.shape for k, v in batch.items()})


# ---- the interface t5x calls --------------------------------------------------------------------------------
@pytest.mark.parametrize('cls', [t5x_models.SCModel, t5x_models.SpacTorModel])
def test_models_have_every_base_model_method_with_its_signature(cls):
  assert issubclass(cls.FEATURE_CONVERTER_CLS, seqio.FeatureConverter)
  for method, expected in BASE_MODEL_METHODS.items():
    params = list(inspect.signature(getattr(cls, method)).parameters.values())
    assert params[0].name == 'self', method
    got = [(p.name, p.default) for p in params[1:len(expected) + 1]]
    assert got == expected, f'{cls.__name__}.{method}{got} != t5x {expected}'
    extra = params[len(expected) + 1:]
    assert all(p.default is not REQUIRED for p in extra), f'{cls.__name__}.{method}: required extra params'
  init_params = inspect.signature(cls.__init__).parameters
  assert list(init_params)[1:5] == ['module', 'input_vocabulary', 'output_vocabulary', 'optimizer_def']


def test_feature_converters():
  assert t5x_models.SCModel.FEATURE_CONVERTER_CLS is seqio.EncDecFeatureConverter
  assert t5x_models.SpacTorModel.FEATURE_CONVERTER_CLS is SpacTorFeatureConverter


def test_spactor_model_needs_the_stage_1_heads(vocabulary):
  plain = model.SpacTor(config.t5_preset('tiny', vocab_size=256))
  with pytest.raises(ValueError, match='generator'):
    t5x_models.SpacTorModel(plain, vocabulary, vocabulary, optimizer_def=None)


@pytest.mark.parametrize('cls, top_level', [
    (t5x_models.SCModel, ['decoder', 'encoder', 'token_embedder']),
    (t5x_models.SpacTorModel, ['decoder', 'encoder', 'generator', 'rtd_head', 'token_embedder'])])
@pytest.mark.parametrize('size', ['tiny', 'large'])
def test_initial_variables_have_t5x_axis_names_for_every_parameter(vocabulary, batch, cls, top_level, size):
  m = make(cls, vocabulary, size)
  variables = jax.eval_shape(lambda: init(m, batch))
  assert sorted(variables) == ['params', 'params_axes'] and sorted(variables['params']) == top_level
  params = jax.tree_util.tree_flatten_with_path(variables['params'])[0]
  axes = flax_axes(variables['params_axes'])
  assert len(axes) == len(params)
  for path, leaf in params:
    names = axes[tuple(k.key for k in path)]
    assert len(names) == leaf.ndim, path
    assert set(names) <= T5X_FACTOR_RULE_NAMES, (path, names)


def flax_axes(params_axes):
  """{param path: axis names} from flax's params_axes collection ('<name>_axes' leaves of AxisMetadata)."""
  flat = jax.tree_util.tree_flatten_with_path(params_axes, is_leaf=lambda x: hasattr(x, 'names'))[0]
  return {tuple(k.key for k in path[:-1]) + (path[-1].key[:-len('_axes')],): leaf.names for path, leaf in flat}


# ---- loss_fn ------------------------------------------------------------------------------------------------
def test_sc_loss_fn_matches_the_project_objective(vocabulary, batch):
  m = make(t5x_models.SCModel, vocabulary)
  params = init(m, batch)['params']
  loss, metrics = jax.jit(m.loss_fn)(params, batch, None)
  assert all(isinstance(v, clu.metrics.Metric) for v in metrics.values())
  logits = m.module.apply({'params': params}, batch['encoder_input_tokens'], batch['decoder_input_tokens'],
                          batch['decoder_target_tokens'], enable_dropout=False)
  expected, raw = objectives.sc_loss(logits, batch['decoder_target_tokens'], batch['decoder_loss_weights'],
                                     normalization=objectives.PAPER_NORMALIZATION)  # the models' default
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  summary = objectives.summarize(raw)
  for name in ('sc_loss', 'sc_accuracy'):
    np.testing.assert_allclose(metrics[name].compute(), summary[name], rtol=1e-5)
  np.testing.assert_allclose(metrics['loss'].compute(), loss, rtol=1e-6)


def test_spactor_loss_fn_combines_the_three_terms_and_trains_every_parameter(vocabulary, batch):
  """As t5x's trainer calls it: value_and_grad of loss_fn with the metrics as aux."""
  # Per-term means ('token_mean'): each term is its weight times its metric (the default sums: test_fidelity_*).
  m = make(t5x_models.SpacTorModel, vocabulary, lambda1=3.0, lambda2=5.0, loss_normalization='token_mean')
  params = init(m, batch)['params']
  train = jax.jit(jax.value_and_grad(m.loss_fn, has_aux=True))
  (loss, metrics), grads = train(params, batch, jax.random.PRNGKey(1))
  # t5x's trainer fills in the durations of its timing metrics: compute only the others here.
  assert any(k.startswith('timing/') for k in metrics) == t5x_models.HAS_T5X
  value = {k: float(v.compute()) for k, v in metrics.items() if not k.startswith('timing/')}
  assert np.isfinite(loss) and loss > 0
  np.testing.assert_allclose(value['rtd_term'], 3.0 * value['rtd_loss'], rtol=1e-5)
  np.testing.assert_allclose(value['sc_term'], 5.0 * value['sc_loss'], rtol=2e-3)  # the metric has no z-loss
  np.testing.assert_allclose(value['gen_term'] + value['rtd_term'] + value['sc_term'], loss, rtol=1e-5)
  np.testing.assert_allclose(value['loss'], loss, rtol=1e-6)
  assert 0.0 <= value['replaced'] <= 1.0
  for name in ('generator', 'rtd_head', 'encoder', 'decoder', 'token_embedder'):
    assert float(sum(jnp.sum(jnp.abs(g)) for g in jax.tree_util.tree_leaves(grads[name]))) > 0, name
  # Training draws new generator samples per rng; evaluation (dropout_rng=None) is deterministic.
  assert float(train(params, batch, jax.random.PRNGKey(2))[0][0]) != float(loss)
  evaluate = jax.jit(m.eval_fn)
  eval_loss, eval_metrics = evaluate(params, batch)
  np.testing.assert_array_equal(eval_loss, evaluate(params, batch)[0])
  # Evaluation adds span corruption on the clean inputs X_c, as the SC model computes it on them.
  sc_model = t5x_models.SCModel(model.SpacTor(m.module.config), vocabulary, vocabulary, optimizer_def=None, z_loss=0.0,
                                loss_normalization='token_mean')
  clean = {**batch, 'encoder_input_tokens': batch['encoder_clean_tokens']}
  sc_params = {k: v for k, v in params.items() if k not in ('generator', 'rtd_head')}
  np.testing.assert_allclose(eval_metrics['sc_clean_loss'].compute(), sc_model.loss_fn(sc_params, clean, None)[0],
                             rtol=1e-5)


# ---- decoding and scoring (the local stand-in; t5x's are used when t5x is installed) ------------------------
def test_greedy_prediction_is_consistent_with_teacher_forcing_and_score_batch(vocabulary, batch):
  m = make(t5x_models.SCModel, vocabulary)
  params = init(m, batch)['params']
  # An untrained model predicts pad (0) everywhere, and pad inside a target is masked by teacher forcing: a zero
  # embedding row gives pad the logit 0, below the best of the other 255 tied logits.
  embedding = params['token_embedder']['embedding']
  params = {**params, 'token_embedder': {'embedding': embedding.at[0].set(0.0)}}
  tokens, aux = jax.jit(m.predict_batch_with_aux)(params, batch)
  assert (tokens > 0).all()
  assert tokens.shape == (B, T) and tokens.dtype == jnp.int32
  np.testing.assert_array_equal(m.predict_batch(params, batch), tokens)
  # Up to (and with) the first EOS, each token is the argmax of a full forward pass over the prefix before it.
  length = np.where((tokens == 1).any(axis=1), np.argmax(tokens == 1, axis=1) + 1, T)
  weights = (np.arange(T)[None, :] < length[:, None]).astype(np.float32)
  forced = {**batch, 'decoder_target_tokens': np.asarray(tokens) * weights.astype(np.int32),
            'decoder_input_tokens': np.concatenate([np.zeros((B, 1), np.int32), tokens[:, :-1]], axis=1),
            'decoder_loss_weights': weights}
  logits = m.module.apply({'params': params}, forced['encoder_input_tokens'], forced['decoder_input_tokens'],
                          forced['decoder_target_tokens'], enable_dropout=False)
  np.testing.assert_array_equal(np.argmax(logits, -1) * weights, forced['decoder_target_tokens'])
  # aux['scores'] is the log-likelihood of the prediction, which score_batch computes by teacher forcing.
  np.testing.assert_allclose(aux['scores'], m.score_batch(params, forced), rtol=1e-4)
  scores, intermediates = m.score_batch(params, forced, return_intermediates=True)
  np.testing.assert_allclose(intermediates['decoder']['token_scores'][0].sum(-1), scores, rtol=1e-6)


def test_score_batch_is_the_negative_sc_loss_sum(vocabulary, batch):
  m = make(t5x_models.SpacTorModel, vocabulary)
  params = init(m, batch)['params']
  logits = m.module.apply({'params': params}, batch['encoder_input_tokens'], batch['decoder_input_tokens'],
                          batch['decoder_target_tokens'], enable_dropout=False)
  nll = objectives.token_cross_entropy(logits, batch['decoder_target_tokens']).sum(-1)
  np.testing.assert_allclose(m.score_batch(params, batch), -nll, rtol=1e-5)


# ---- gin/t5x ------------------------------------------------------------------------------------------------
_VOCABULARY = {}


@gin.configurable
def _built(model=gin.REQUIRED):
  return model


@gin.configurable
def _tiny_vocabulary():
  return _VOCABULARY['tiny']


def _binary(name):
  """A stand-in for the function `name` of a t5x binary's __main__ (t5x.train: train, t5x.eval: evaluate)."""
  def binary(**kwargs):
    return kwargs
  binary.__name__ = binary.__qualname__ = name
  binary.__module__ = '__main__'
  return binary


# gin-configurable as the binaries make them (t5x/train.py: `train_using_gin = gin.configurable(train)`).
_BINARIES = {name: _binary(name) for name in ('train', 'evaluate')}
TRAIN, EVALUATE = (gin.configurable(f) for f in _BINARIES.values())


@pytest.fixture
def parse(tmp_path, vocabulary, monkeypatch):
  """parse(files, bindings) with t5x's gin files (or empty stand-ins in CI) and t5x's names skipped.

  TRAIN() / EVALUATE() then return the arguments t5x.train's train / t5x.eval's evaluate would get.
  """
  for name, function in _BINARIES.items():
    monkeypatch.setattr(sys.modules['__main__'], name, function, raising=False)
  if t5x_models.HAS_T5X:
    import t5x  # pylint: disable=g-import-not-at-top
    t5x_dir = os.path.dirname(os.path.dirname(t5x.__file__))
  else:
    t5x_dir = str(tmp_path)
    for name in ('pretrain', 'finetune', 'eval'):
      (tmp_path / 't5x' / 'configs' / 'runs').mkdir(parents=True, exist_ok=True)
      (tmp_path / 't5x' / 'configs' / 'runs' / f'{name}.gin').write_text('')

  def _parse(files, bindings=()):
    gin.clear_config()
    for path in (ROOT, t5x_dir):
      gin.add_config_file_search_path(path)
    skip = [] if t5x_models.HAS_T5X else T5X_NAMES
    gin.parse_config_files_and_bindings(files, list(bindings), skip_unknown=skip)

  _VOCABULARY['tiny'] = vocabulary
  yield _parse
  gin.clear_config()


def test_every_t5x_gin_file_is_tested():
  models = {f'gin/t5x/models/{name}.gin' for name in MODEL_FILES} | {'gin/t5x/models/sc.gin',
                                                                    'gin/t5x/models/spactor.gin'}
  runs = {f'gin/t5x/runs/{name}.gin' for name in RUN_FILES} | {'gin/t5x/runs/cpu.gin'}
  assert set(T5X_GIN) == models | runs


SIZES = {'tiny': (128, 2, 1), 'small': (512, 6, 2), 'base': (768, 12, 4), 'large': (1024, 24, 6)}
MODEL_FILES = [f't5_1_0_{s}' for s in SIZES] + [f't5_1_0_{s}_spactor' for s in SIZES]


@pytest.mark.parametrize('name', MODEL_FILES)
def test_model_gin_files_build_the_model(parse, name):
  size = name.split('_')[3]
  parse([f'gin/t5x/models/{name}.gin'], ['OPTIMIZER = None', 'DROPOUT_RATE = 0.0', 'VOCABULARY = @_tiny_vocabulary()',
                                         '_built.model = %MODEL'])
  m = _built()
  emb_dim, layers, generator_layers = SIZES[size]
  cfg = m.module.config
  assert (cfg.emb_dim, cfg.num_encoder_layers, cfg.vocab_size, cfg.dtype) == (emb_dim, layers, 256, 'bfloat16')
  assert cfg.mlp_activations == ('relu',) and cfg.logits_via_embedding  # T5.1.0
  assert m._z_loss == 1e-4  # pylint: disable=protected-access
  if name.endswith('_spactor'):
    assert isinstance(m, t5x_models.SpacTorModel)
    assert m.module.generator.num_layers == generator_layers and m.module.rtd_head.mlp_dim == cfg.mlp_dim
    assert (m.weights.lambda1, m.weights.lambda2) == (10.0, 10.0)
    assert gin.query_parameter('MLM_RATIO/gin.macro.value') == (0.2 if size == 'large' else 0.15)
  else:
    assert type(m) is t5x_models.SCModel and m.module.generator is None and m.module.rtd_head is None


RUN_FILES = ['spactor_stage1', 'spactor_stage2', 'sc_baseline', 'finetune', 'eval']
RUN_MODEL = {'spactor_stage1': 't5_1_0_base_spactor'}
# What a user passes on the command line: the %gin.REQUIRED macros of gin/t5x/runs and of t5x's run files.
COMMAND_LINE = {
    'spactor_stage1': {'MODEL_DIR': '/tmp/s1', 'TAU': 50},
    'spactor_stage2': {'MODEL_DIR': '/tmp/s2', 'TRAIN_STEPS': 100, 'TAU': 50, 'STAGE1_DIR': '/tmp/s1'},
    'sc_baseline': {'MODEL_DIR': '/tmp/sc'},
    'finetune': {'MODEL_DIR': '/tmp/ft', 'TRAIN_STEPS': 150, 'MIXTURE_OR_TASK_NAME': 'spactor_sc_c4',
                 'TASK_FEATURE_LENGTHS': {'inputs': 512, 'targets': 114}, 'MIXTURE_OR_TASK_MODULE': None,
                 'INITIAL_CHECKPOINT_PATH': '/tmp/s2/checkpoint_100'},
    'eval': {'MIXTURE_OR_TASK_NAME': 'spactor_sc_c4', 'CHECKPOINT_PATH': '/tmp/s2/checkpoint_100',
             'EVAL_OUTPUT_DIR': '/tmp/eval'},
}


@pytest.mark.parametrize('run', RUN_FILES)
@pytest.mark.parametrize('cpu', [False, True])
def test_run_gin_files_parse_with_their_model(parse, run, cpu):
  model_file = f'gin/t5x/models/{RUN_MODEL.get(run, "t5_1_0_base")}.gin'
  files = [model_file, f'gin/t5x/runs/{run}.gin'] + (['gin/t5x/runs/cpu.gin'] if cpu else [])
  parse(files, ['OPTIMIZER = None', 'VOCABULARY = @_tiny_vocabulary()']
        + [f'{k} = {v!r}' for k, v in COMMAND_LINE[run].items()])
  query = lambda name: gin.query_parameter(f'{name}/gin.macro.value')
  if run == 'eval':
    assert EVALUATE()['output_dir'] == '/tmp/eval'
  else:
    steps = {'spactor_stage1': 50, 'spactor_stage2': 100, 'sc_baseline': 1000000, 'finetune': 150}[run]
    assert TRAIN()['total_steps'] == steps
  if run in ('spactor_stage1', 'spactor_stage2', 'sc_baseline'):
    task = 'spactor_hybrid_c4' if run == 'spactor_stage1' else 'spactor_sc_c4'
    assert query('MIXTURE_OR_TASK_NAME') == task and task in seqio.TaskRegistry.names()  # `import tasks` ran
    lengths = {'inputs': 128, 'targets': 29} if cpu else {'inputs': 512, 'targets': 114}
    assert query('TASK_FEATURE_LENGTHS') == lengths
    assert lengths['targets'] == preprocessors.targets_length_for(lengths['inputs'])
    assert query('BATCH_SIZE') == (8 if cpu else 2048) and query('USE_CACHED_TASKS') is False
    assert query('DROPOUT_RATE') == 0.0
  if run == 'spactor_stage1':
    assert gin.get_bindings(preprocessors.mlm_mask) == {'mlm_ratio': 0.15, 'strategy': 'random_tokens'}
  if run == 'finetune':
    assert query('DROPOUT_RATE') == 0.1
  if cpu:
    assert query('ACTIVATION_DTYPE') == 'float32'


@gin.configurable
def _value(value=gin.REQUIRED):
  return value


def parse_argv(parse, argv, bindings=('VOCABULARY = @_tiny_vocabulary()',)):
  """Parses a t5x.train argv as t5x reads it (--gin.X=V -> binding X = V); returns the model it builds."""
  files = [a.split('=', 1)[1] for a in argv if a.startswith('--gin_file=')]
  flags = [a[len('--gin.'):].replace('=', ' = ', 1) for a in argv if a.startswith('--gin.')]
  parse(files, flags + ['OPTIMIZER = None', '_built.model = %MODEL', *bindings])
  return _built()


def test_launch_tpu_overrides_reach_the_model_and_the_data(parse):
  """The exact t5x.train arguments of launch_tpu.sh, as t5x reads them."""
  from tests import test_launch_tpu  # pylint: disable=g-import-not-at-top
  cmds = test_launch_tpu.dry_run(*test_launch_tpu.REQUIRED, '--model-size', 'tiny', '--tau', '70', '--total-steps',
                                 '100', '--lambda1', '3', '--lambda2', '4', '--mlm-ratio', '0.25', '--baseline')
  baseline, stage1, stage2 = test_launch_tpu.train_runs(cmds)
  query = lambda name: gin.query_parameter(f'{name}/gin.macro.value')
  m = parse_argv(parse, stage1)
  assert isinstance(m, t5x_models.SpacTorModel) and m.module.config.emb_dim == SIZES['tiny'][0]
  assert (m.weights.lambda1, m.weights.lambda2, m.mlm_ratio) == (3.0, 4.0, 0.25)
  assert gin.get_bindings(preprocessors.mlm_mask) == {'mlm_ratio': 0.25, 'strategy': 'random_tokens'}
  # MLM_STRATEGY means under t5x what it means in the project's trainer (not a macro nothing reads).
  parse_argv(parse, stage1 + ["--gin.MLM_STRATEGY='spanbert'"])
  assert gin.get_bindings(preprocessors.mlm_mask)['strategy'] == 'spanbert'
  assert (TRAIN()['total_steps'], query('MIXTURE_OR_TASK_NAME')) == (70, 'spactor_hybrid_c4')
  assert query('MODEL_DIR') == 'gs://bkt/runs/spactor-tiny/tau70/stage1'
  m = parse_argv(parse, stage2, ['VOCABULARY = @_tiny_vocabulary()', '_value.value = %STAGE1_CHECKPOINT'])
  assert type(m) is t5x_models.SCModel and m.module.generator is None
  assert m._sc_weight == 4.0  # pylint: disable=protected-access  # stage 2 keeps the SC term's stage-1 scale, λ2
  assert (TRAIN()['total_steps'], query('MIXTURE_OR_TASK_NAME')) == (100, 'spactor_sc_c4')
  assert _value() == 'gs://bkt/runs/spactor-tiny/tau70/stage1/checkpoint_70'
  assert query('MODEL_DIR') == 'gs://bkt/runs/spactor-tiny/tau70/stage2'
  m = parse_argv(parse, baseline)
  assert type(m) is t5x_models.SCModel and m.module.generator is None
  assert m._sc_weight == 4.0  # pylint: disable=protected-access  # the baseline trains on stage 2's λ2·L_SC
  assert (TRAIN()['total_steps'], query('MIXTURE_OR_TASK_NAME')) == (100, 'spactor_sc_c4')
  assert query('MODEL_DIR') == 'gs://bkt/runs/spactor-tiny/sc_baseline'


@pytest.mark.parametrize('corpus', ['sotu', 'c4'])
def test_the_model_takes_the_vocabulary_of_its_task(parse, corpus):
  """launch_tpu.sh --corpus sotu: the sotu tasks' vocabulary, not the C4 one (lazy: nothing is loaded)."""
  from tests import test_launch_tpu  # pylint: disable=g-import-not-at-top
  cmds = test_launch_tpu.dry_run(*test_launch_tpu.REQUIRED, '--corpus', corpus, '--baseline')
  expected = vocab.sotu_vocabulary() if corpus == 'sotu' else vocab.c4_vocabulary()
  for argv in test_launch_tpu.train_runs(cmds):
    files = [a.split('=', 1)[1] for a in argv if a.startswith('--gin_file=')]
    flags = [a[len('--gin.'):].replace('=', ' = ', 1) for a in argv if a.startswith('--gin.')]
    parse(files, flags + ['OPTIMIZER = None', '_value.value = %VOCABULARY'])
    assert _value() == expected, argv


def test_task_vocabulary_imports_the_module_and_needs_one_vocabulary():
  assert t5x_gin.task_vocabulary('spactor_sc_sotu', module='tasks') == vocab.sotu_vocabulary()
  features = {'inputs': seqio.Feature(vocab.sotu_vocabulary()), 'targets': seqio.Feature(vocab.c4_vocabulary())}
  seqio.TaskRegistry.add('test_t5x_two_vocabularies', seqio.FunctionDataSource(lambda split, shuffle_files: None,
                                                                               splits=['train']),
                         output_features=features)
  try:
    with pytest.raises(ValueError, match='different inputs and targets vocabularies'):
      t5x_gin.task_vocabulary('test_t5x_two_vocabularies')
  finally:
    seqio.TaskRegistry.remove('test_t5x_two_vocabularies')


# ---- τ under t5x: TAU means τ, or the run stops --------------------------------------------------------------
def test_tau_is_the_stage_1_length_and_the_stage_2_restore_step(parse):
  parse_files = parse
  parse = lambda files, bindings: parse_files(files, bindings + ['OPTIMIZER = None', "MODEL_DIR = '/tmp/m'",
                                                                 'VOCABULARY = @_tiny_vocabulary()'])
  stage1 = ['gin/t5x/models/t5_1_0_tiny_spactor.gin', 'gin/t5x/runs/spactor_stage1.gin']
  for bindings in (['TAU = 70'], ['TRAIN_STEPS = 70'], ['TAU = 70', 'TRAIN_STEPS = 70']):
    parse(stage1, bindings)
    assert TRAIN()['total_steps'] == 70, bindings
  stage2 = ['gin/t5x/models/t5_1_0_tiny.gin', 'gin/t5x/runs/spactor_stage2.gin']
  for bindings in (["STAGE1_DIR = '/s1/'", 'TAU = 70'], ["STAGE1_CHECKPOINT = '/s1/checkpoint_70'"],
                   ["STAGE1_CHECKPOINT = '/s1/checkpoint_70'", 'TAU = 70']):
    parse(stage2, bindings + ['TRAIN_STEPS = 100', '_value.value = %STAGE1_CHECKPOINT'])
    assert (TRAIN()['total_steps'], _value()) == (100, '/s1/checkpoint_70'), bindings
  parse(['gin/t5x/models/t5_1_0_tiny.gin', 'gin/t5x/runs/sc_baseline.gin'], ['TAU = 0', 'TRAIN_STEPS = 100'])
  assert TRAIN()['total_steps'] == 100


@pytest.mark.parametrize('run, bindings, message', [
    ('spactor_stage1', ['TAU = 70', 'TRAIN_STEPS = 100'], 'TAU=70 and TRAIN_STEPS=100 differ'),
    ('spactor_stage1', [], 'pass --gin.TAU=<τ>'),
    ('spactor_stage1', ['TAU = 0'], 'TAU=0 is the SC baseline'),
    ('spactor_stage1', ['TAU = 7.5'], 'TAU must be a non-negative integer'),
    ('spactor_stage1', ['TAU = -3'], 'TAU must be a non-negative integer'),
    ('spactor_stage2', ['TAU = 70', 'TRAIN_STEPS = 100'], 'STAGE1_DIR'),
    ('spactor_stage2', ["STAGE1_DIR = '/s1'", 'TRAIN_STEPS = 100'], 'STAGE1_DIR'),
    ('spactor_stage2', ["STAGE1_CHECKPOINT = '/s1/checkpoint_50'", 'TAU = 70', 'TRAIN_STEPS = 100'],
     'the checkpoint of step 50'),
    ('spactor_stage2', ["STAGE1_DIR = '/s1'", 'TAU = 100', 'TRAIN_STEPS = 100'], 'must be larger'),
    ('spactor_stage2', ["STAGE1_CHECKPOINT = '/s1/checkpoint_100'", 'TRAIN_STEPS = 60'], 'must be larger'),
    ('sc_baseline', ['TAU = 5'], 'the SC baseline is τ = 0'),
    ('finetune', ['TAU = 5'], 'means nothing to fine-tuning'),
    ('eval', ['TAU = 5'], 'means nothing to evaluation'),
])
def test_a_tau_that_would_be_ignored_stops_the_run(parse, run, bindings, message):
  model = 't5_1_0_tiny_spactor' if run == 'spactor_stage1' else 't5_1_0_tiny'
  given = {'TAU', 'STAGE1_DIR', 'TRAIN_STEPS'} if run.startswith('spactor_') else {'TAU'}
  required = {k: v for k, v in COMMAND_LINE[run].items() if k not in given}
  parse([f'gin/t5x/models/{model}.gin', f'gin/t5x/runs/{run}.gin'],
        [f'{k} = {v!r}' for k, v in required.items()] + bindings
        + ['OPTIMIZER = None', 'VOCABULARY = @_tiny_vocabulary()'])
  with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')):
    EVALUATE() if run == 'eval' else TRAIN()


# ---- the generator projects only the [M] positions -------------------------------------------------------------
def most_masks_by_enumeration(length, ratio):
  """The most [M] of any set of examples (n eligible tokens + at least an EOS each) packed into `length` tokens."""
  def best(room, smallest):
    return max([0] + [round(ratio * n) + best(room - n - 1, n) for n in range(smallest, room)])
  return best(length, 1)


def test_max_mlm_positions_bounds_every_row_and_is_reached():
  # One example per row: round(ratio * n) for its n <= length - 1 eligible tokens.
  assert t5x_models.max_mlm_positions(128, 0.15, packed=False) == 19
  assert t5x_models.max_mlm_positions(512, 0.15, packed=False) == 77
  # Packed: twenty 5-token examples of 4 eligible tokens hold 20 [M] in 100 tokens, more than round(0.15 * 100) + 1.
  assert t5x_models.max_mlm_positions(100, 0.15, packed=True) == 20
  for length, ratio in itertools.product((6, 11, 17, 24), (0.15, 0.2, 0.3, 0.5)):
    assert t5x_models.max_mlm_positions(length, ratio, True) == max(1, most_masks_by_enumeration(length, ratio))
  with pytest.raises(ValueError, match='mlm_ratio'):
    t5x_models.max_mlm_positions(128, 1.0, packed=False)


def test_generator_projects_only_the_mask_positions(vocabulary, batch):
  full = make(t5x_models.SpacTorModel, vocabulary)
  gathered = make(t5x_models.SpacTorModel, vocabulary, mlm_ratio=0.45)
  k = t5x_models.max_mlm_positions(L, 0.45, packed=False)
  assert k < L and batch['encoder_mlm_mask'].sum(1).max() <= k
  params = jax.eval_shape(lambda: init(full, batch))['params']  # shapes are all make_jaxpr needs
  # The generator's projection onto the vocabulary: [B, L, V] for every position, [B, k, V] for the [M] ones.
  vocab_size = vocab.model_vocab_size(vocabulary)
  assert f'f32[{B},{L},{vocab_size}]' in str(jax.make_jaxpr(full.loss_fn)(params, batch, None))
  jaxpr = str(jax.make_jaxpr(gathered.loss_fn)(params, batch, None))
  assert f'f32[{B},{k},{vocab_size}]' in jaxpr and f'f32[{B},{L},{vocab_size}]' not in jaxpr
  # The same generator loss is tested in tests/test_stages.py (max_predictions); here: the model passes k.
