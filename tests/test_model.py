"""Tests of spactor.model and spactor.config: parameter tree, masks, decoding, weight sharing, presets.

Golden parameter trees live in tests/golden/params_<version>_<size>.json (path -> shape of the stage-1 model,
vocab 32128). After an intended architecture change, regenerate them and review the diff:

    PYTHONPATH=. .venv/bin/python tests/test_model.py --regen-golden
"""
import functools
import json
import math
import os
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from spactor import config as config_lib
from spactor import model as model_lib
from spactor import objectives
from spactor import partitioning
from spactor import stages

GOLDEN_DIR = os.path.join(os.path.dirname(__file__), 'golden')
VOCAB = 64  # small vocabulary for the tests that run the model
VERSIONS = config_lib.VERSIONS


def tiny(version='t5_1_0', **overrides):
  return config_lib.preset('tiny', version, vocab_size=VOCAB, **overrides)


# One set of shapes for most tests, so each jitted function compiles once; DEC_LEN passes the 16 exact buckets of
# causal relative positions, so the cached decoding test covers the log-spaced ones.
BATCH, ENC_LEN, DEC_LEN = 2, 12, 20


def fast_jit(fn, **kwargs):
  """jax.jit with XLA's backend optimisation off: the same program, compiled in about half the CPU time."""
  return jax.jit(fn, compiler_options={'xla_backend_optimization_level': 0}, **kwargs)


def dummy_inputs(batch=BATCH, enc_len=ENC_LEN, dec_len=DEC_LEN):
  return jnp.ones((batch, enc_len), jnp.int32), jnp.ones((batch, dec_len), jnp.int32)


@functools.lru_cache(maxsize=None)
def stage1(version):
  """(model, variables) of the tiny stage-1 model, initialised once per version."""
  t5, gen, rtd = tiny(version)
  model = model_lib.SpacTor(t5, gen, rtd)
  enc, dec = dummy_inputs()
  variables = fast_jit(functools.partial(model.init, method=model_lib.SpacTor.init_all))(
      jax.random.PRNGKey(0), enc, dec, dec)
  return model, variables


def _heads(model, variables, enc, dec_in, targets, enc_seg=None, dec_seg=None, dropout_rng=None):
  """Every head of a stage-1 model, as the hybrid loss uses them (dropout when dropout_rng is given)."""
  dropout = dropout_rng is not None
  rngs = {'dropout': dropout_rng} if dropout else None
  encoded = model.apply(variables, enc, enc_seg, enable_dropout=dropout, rngs=rngs, method='encode')
  return {
      'encoded': encoded,
      'logits': model.apply(variables, encoded, enc, dec_in, targets, enc_seg, dec_seg, enable_dropout=dropout,
                            rngs=rngs, method='decode'),
      'generator_logits': model.apply(variables, enc, enc_seg, enable_dropout=dropout, rngs=rngs,
                                      method='generator_logits'),
      'rtd_logits': model.apply(variables, encoded, method='rtd_logits'),
  }


@functools.lru_cache(maxsize=None)
def heads_fn(version, **overrides):
  """Jitted `_heads` of the tiny stage-1 model: (variables, enc, dec_in, targets, enc_seg, dec_seg, rng) -> dict."""
  model = model_lib.SpacTor(*tiny(version, **overrides))
  return fast_jit(functools.partial(_heads, model))


@functools.lru_cache(maxsize=None)
def abstract_stage1(size, version, **preset_kwargs):
  """Shapes of the stage-1 variables, without running the model (cheap for base and large)."""
  t5, gen, rtd = config_lib.preset(size, version, **preset_kwargs)
  model = model_lib.SpacTor(t5, gen, rtd)
  enc, dec = dummy_inputs(1, 8, 8)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), enc, dec, dec, method=model_lib.SpacTor.init_all))


def flat_shapes(params):
  return {'/'.join(path): list(x.shape) for path, x in flax.traverse_util.flatten_dict(params).items()}


def random_tokens(seed, shape):
  """Token ids >= 2 (no padding, no EOS), from numpy: jax.random.randint would compile once per shape."""
  return jnp.asarray(np.random.default_rng(seed).integers(2, VOCAB, shape), jnp.int32)


# ---------------------------------------------------------------------------------------------------------------
# Parameter tree.
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('version', VERSIONS)
@pytest.mark.parametrize('tied_generator', [False, True])
def test_every_param_has_standard_axis_names(version, tied_generator):
  variables = abstract_stage1('tiny', version, tied_generator_output=tied_generator)
  params = flax.traverse_util.flatten_dict(variables['params'])
  axes = flax.traverse_util.flatten_dict(partitioning.logical_axes(variables['params_axes']),
                                         is_leaf=lambda _, x: isinstance(x, jax.sharding.PartitionSpec))
  assert set(params) == set(axes)
  for path, value in params.items():
    names = tuple(axes[path])
    assert len(names) == value.ndim, path
    assert set(names) <= partitioning.PARAM_AXIS_NAMES, (path, names)
    assert value.dtype == jnp.float32, path


@pytest.mark.parametrize('version', VERSIONS)
@pytest.mark.parametrize('size', config_lib.SIZES)
def test_param_paths_and_shapes_match_golden(size, version):
  with open(os.path.join(GOLDEN_DIR, f'params_{version}_{size}.json')) as f:
    golden = json.load(f)
  assert flat_shapes(abstract_stage1(size, version)['params']) == golden


def test_param_counts_match_published_t5():
  """Discriminator sizes of T5.1.0 and T5.1.1 base/large with vocab 32128 (as t5x and Hugging Face count them)."""
  def discriminator_count(size, version):
    params = abstract_stage1(size, version)['params']
    return model_lib.param_count({k: v for k, v in params.items() if k not in ('generator', 'rtd_head')})

  assert discriminator_count('base', 't5_1_0') == 222_903_552  # "T5-Base, 220M"
  assert discriminator_count('large', 't5_1_0') == 737_668_096
  assert discriminator_count('base', 't5_1_1') == 247_577_856


@pytest.mark.parametrize('version', VERSIONS)
def test_presets_grow_in_size_order(version):
  """SIZES lists the presets smallest first (the SSR demo's student, `micro`, is smaller than its generator)."""
  counts = [model_lib.param_count(abstract_stage1(size, version, vocab_size=VOCAB)['params'])
            for size in config_lib.SIZES]
  assert counts == sorted(counts) and len(set(counts)) == len(counts), dict(zip(config_lib.SIZES, counts))


@pytest.mark.parametrize('version', VERSIONS)
def test_stage2_params_are_stage1_without_generator_and_rtd_head(version):
  t5, _, _ = tiny(version)
  enc, dec = dummy_inputs()
  stage2 = jax.eval_shape(lambda: model_lib.SpacTor(t5).init(jax.random.PRNGKey(0), enc, dec, dec))
  stage1_params = dict(abstract_stage1('tiny', version, vocab_size=VOCAB)['params'])
  assert set(stage1_params) - set(stage2['params']) == {'generator', 'rtd_head'}
  for key in ('generator', 'rtd_head'):
    del stage1_params[key]
  assert flat_shapes(stage1_params) == flat_shapes(stage2['params'])
  expected = {'token_embedder', 'encoder', 'decoder'} | ({'logits_dense'} if version == 't5_1_1' else set())
  assert set(stage2['params']) == expected


def test_generator_shares_the_token_embedder():
  """A generator-only loss moves the shared embedder and G, and nothing of D's stacks or the RTD head."""
  model, variables = stage1('t5_1_1')
  tokens = random_tokens(1, (BATCH, ENC_LEN))

  def generator_loss(params):
    logits = model.apply({'params': params}, tokens, enable_dropout=False, method='generator_logits')
    return -jnp.mean(jax.nn.log_softmax(logits)[..., 3])

  grads = fast_jit(jax.grad(generator_loss))(variables['params'])
  norm = lambda tree: float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree_util.tree_leaves(tree)))
  assert norm(grads['token_embedder']) > 0
  assert norm(grads['generator']) > 0
  for key in ('encoder', 'decoder', 'logits_dense', 'rtd_head'):
    assert norm(grads[key]) == 0.0, key


def test_tied_generator_output_uses_the_embedding_and_a_bias():
  t5, gen, rtd = tiny('t5_1_0', tied_generator_output=True)
  shapes = flat_shapes(abstract_stage1('tiny', 't5_1_0', vocab_size=VOCAB, tied_generator_output=True)['params'])
  assert shapes['generator/logits_bias'] == [VOCAB]
  assert not any(path.startswith('generator/logits_dense') for path in shapes)
  assert gen.tied_output and t5.logits_via_embedding


# ---------------------------------------------------------------------------------------------------------------
# Forward pass: masks, packing, dtypes.
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('version', VERSIONS)
def test_outputs_of_every_head(version):
  _, variables = stage1(version)
  enc, dec = dummy_inputs()
  out = heads_fn(version)(variables, enc, dec, dec)
  assert out['logits'].shape == (BATCH, DEC_LEN, VOCAB)
  assert out['generator_logits'].shape == (BATCH, ENC_LEN, VOCAB)
  assert out['rtd_logits'].shape == (BATCH, ENC_LEN)
  for x in out.values():
    assert x.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(x)))


def test_decoder_is_causal():
  _, variables = stage1('t5_1_0')
  enc = random_tokens(2, (BATCH, ENC_LEN))
  targets = random_tokens(3, (BATCH, DEC_LEN))
  inputs = jnp.concatenate([jnp.zeros((BATCH, 1), jnp.int32), targets[:, :-1]], axis=1)
  changed = inputs.at[:, 5].set((inputs[:, 5] + 1) % VOCAB + 2)
  logits = lambda dec_in: heads_fn('t5_1_0')(variables, enc, dec_in, targets)['logits']
  before, after = logits(inputs), logits(changed)
  np.testing.assert_allclose(before[:, :5], after[:, :5], rtol=1e-6, atol=1e-6)
  assert float(jnp.max(jnp.abs(before[:, 5:] - after[:, 5:]))) > 1e-3


def _pack(examples, enc_len=ENC_LEN, dec_len=DEC_LEN):
  """Rows in EncDecFeatureConverter's layout: all examples packed in one row (decoder inputs restart with 0 in
  each segment), or one example per row without segment ids."""
  rows = {k: np.zeros((1, n), np.int32) for k, n in [('enc', enc_len), ('enc_seg', enc_len), ('tgt', dec_len),
                                                     ('dec_in', dec_len), ('dec_seg', dec_len)]}
  e = d = 0
  for segment, (inputs, targets) in enumerate(examples, start=1):
    rows['enc'][0, e:e + len(inputs)] = inputs
    rows['enc_seg'][0, e:e + len(inputs)] = segment
    rows['tgt'][0, d:d + len(targets)] = targets
    rows['dec_in'][0, d + 1:d + len(targets)] = targets[:-1]
    rows['dec_seg'][0, d:d + len(targets)] = segment
    e, d = e + len(inputs), d + len(targets)
  return {k: jnp.asarray(v) for k, v in rows.items()}


@pytest.mark.parametrize('version', VERSIONS)
def test_packed_examples_equal_separate_padded_examples(version):
  _, variables = stage1(version)
  heads = heads_fn(version)
  rng = np.random.default_rng(0)
  examples = [(rng.integers(2, VOCAB, 5), rng.integers(2, VOCAB, 3)),
              (rng.integers(2, VOCAB, 4), rng.integers(2, VOCAB, 4))]
  orders = [(0, 1), (1, 0)]  # both examples packed into each row, in either order
  rows = [_pack([examples[i] for i in order]) for order in orders]
  packed = {k: jnp.concatenate([r[k] for r in rows]) for k in rows[0]}
  packed_out = heads(variables, packed['enc'], packed['dec_in'], packed['tgt'], packed['enc_seg'], packed['dec_seg'])
  rows = [_pack([example]) for example in examples]  # one example per row, padded, without segment ids
  alone = {k: jnp.concatenate([r[k] for r in rows]) for k in rows[0]}
  alone_out = heads(variables, alone['enc'], alone['dec_in'], alone['tgt'])
  for row, order in enumerate(orders):
    e = d = 0
    for i in order:
      inputs, targets = examples[i]
      for key, start, n in [('logits', d, len(targets)), ('generator_logits', e, len(inputs)),
                            ('rtd_logits', e, len(inputs))]:
        np.testing.assert_allclose(alone_out[key][i, :n], packed_out[key][row, start:start + n], atol=2e-5,
                                   err_msg=f'{key} of example {i} in packed row {row}')
      e, d = e + len(inputs), d + len(targets)


def test_padding_does_not_change_outputs(version='t5_1_0'):
  """An example alone at its exact length equals the same example padded to ENC_LEN/DEC_LEN.

  One version suffices: masks are built the same way for both; only the MLP and the output layer differ.
  """
  model, variables = stage1(version)
  rng = np.random.default_rng(1)
  inputs, targets = rng.integers(2, VOCAB, 7), rng.integers(2, VOCAB, 5)
  padded = _pack([(inputs, targets)])
  exact = _pack([(inputs, targets)], len(inputs), len(targets))
  padded_out = heads_fn(version)(variables, padded['enc'], padded['dec_in'], padded['tgt'])
  exact_out = fast_jit(functools.partial(_heads, model))(variables, exact['enc'], exact['dec_in'], exact['tgt'])
  for key, n in [('logits', len(targets)), ('generator_logits', len(inputs)), ('rtd_logits', len(inputs))]:
    np.testing.assert_allclose(padded_out[key][:, :n], exact_out[key], atol=2e-5, err_msg=key)


def test_dropout_acts_only_when_enabled():
  _, variables = stage1('t5_1_1')  # dropout has no params
  enc, dec = random_tokens(8, (BATCH, ENC_LEN)), random_tokens(9, (BATCH, DEC_LEN))
  with_dropout = heads_fn('t5_1_1', dropout_rate=0.3)
  # An 'rbg' key: the same dropout, compiled faster than threefry's unrolled rounds.
  first, second = (with_dropout(variables, enc, dec, dec, dropout_rng=jax.random.key(s, impl='rbg')) for s in (0, 1))
  reference = heads_fn('t5_1_1')(variables, enc, dec, dec)
  for key in ('logits', 'generator_logits', 'rtd_logits'):
    assert float(jnp.max(jnp.abs(first[key] - second[key]))) > 1e-3, key
    assert float(jnp.max(jnp.abs(first[key] - reference[key]))) > 1e-3, key
  model = model_lib.SpacTor(*tiny('t5_1_1', dropout_rate=0.3))
  disabled = fast_jit(functools.partial(model.apply, enable_dropout=False))(variables, enc, dec, dec)
  np.testing.assert_allclose(disabled, reference['logits'], atol=1e-6, rtol=1e-6)


def test_bfloat16_activations_keep_float32_params_and_logits():
  abstract = abstract_stage1('tiny', 't5_1_1', vocab_size=VOCAB, dtype='bfloat16')
  assert {x.dtype for x in jax.tree_util.tree_leaves(abstract['params'])} == {jnp.dtype('float32')}
  _, variables = stage1('t5_1_1')
  enc = random_tokens(4, (BATCH, ENC_LEN))
  dec = random_tokens(5, (BATCH, DEC_LEN))
  out = heads_fn('t5_1_1', dtype='bfloat16')(variables, enc, dec, dec)
  reference = heads_fn('t5_1_1')(variables, enc, dec, dec)
  assert out.pop('encoded').dtype == jnp.bfloat16
  for key, value in out.items():
    assert value.dtype == jnp.float32, key
    assert float(jnp.max(jnp.abs(value - reference[key]))) < 0.1 * float(jnp.max(jnp.abs(reference[key]))), key


def test_stage2_model_refuses_stage1_methods():
  model = model_lib.SpacTor(tiny()[0])
  enc, _ = dummy_inputs()
  variables = {'params': {}}  # the methods refuse before reading any parameter
  with pytest.raises(ValueError, match='no generator'):
    model.apply(variables, enc, method='generator_logits')
  with pytest.raises(ValueError, match='no RTD head'):
    model.apply(variables, jnp.zeros((2, 12, 128)), method='rtd_logits')


# ---------------------------------------------------------------------------------------------------------------
# Autoregressive decoding with the key/value cache.
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('version', VERSIONS)
def test_cached_decoding_matches_full_decoding(version):
  """Step-by-step decoding, driven as t5x's EncoderDecoderModel drives it, reproduces teacher-forced logits."""
  model, variables = stage1(version)
  length = DEC_LEN
  enc = random_tokens(6, (BATCH, ENC_LEN)).at[1, 9:].set(0)  # one row with encoder padding
  dec_in = jnp.concatenate([jnp.zeros((BATCH, 1), jnp.int32), random_tokens(7, (BATCH, length - 1))], axis=1)
  full = heads_fn(version)(variables, enc, dec_in, jnp.ones_like(dec_in))

  # t5x's _compute_kv_cache: a decode=True __call__ on dummy full-length inputs creates the cache.
  create_cache = functools.partial(model.apply, decode=True, enable_dropout=False, mutable=['cache'])
  _, initial = fast_jit(create_cache)({'params': variables['params']}, jnp.ones_like(enc), jnp.ones_like(dec_in),
                                      jnp.ones_like(dec_in))

  @fast_jit
  def step(cache, token):
    logits, updated = model.apply({'params': variables['params'], 'cache': cache}, full['encoded'], enc, token,
                                  token, enable_dropout=False, decode=True, max_decode_length=length,
                                  mutable=['cache'], method='decode')
    return logits[:, 0], updated['cache']

  cache, stepped = initial['cache'], []
  for t in range(length):
    logits, cache = step(cache, dec_in[:, t:t + 1])
    stepped.append(logits)
  np.testing.assert_allclose(jnp.stack(stepped, axis=1), full['logits'], atol=2e-5, rtol=1e-5)
  assert int(cache['decoder']['cache_index']) == length


def test_decoding_refuses_a_wrong_length_and_packing():
  model, variables = stage1('t5_1_0')
  enc, dec = dummy_inputs()
  shapes = lambda f, *args: jax.eval_shape(functools.partial(model.apply, mutable=['cache'], **f), *args)
  _, initial = shapes(dict(decode=True, enable_dropout=False), variables, enc, dec, dec)
  encoded = jax.ShapeDtypeStruct((BATCH, ENC_LEN, 128), jnp.float32)
  token = dec[:, :1]
  with pytest.raises(ValueError, match=f'cache holds {DEC_LEN}'):
    shapes(dict(decode=True, max_decode_length=DEC_LEN + 1, method='decode'),
           {'params': variables['params'], 'cache': initial['cache']}, encoded, enc, token, token)
  with pytest.raises(ValueError, match='packed'):
    shapes(dict(decode=True, encoder_segment_ids=jnp.ones_like(enc), method='decode'), variables, encoded, enc,
           dec, dec)


# ---------------------------------------------------------------------------------------------------------------
# Relative position buckets.
# ---------------------------------------------------------------------------------------------------------------
def t5_bucket(relative_position, bidirectional, num_buckets=32, max_distance=128):
  """T5's formula (mesh_tensorflow's _relative_position_bucket) for one int, in plain Python."""
  n = -relative_position
  bucket = 0
  if bidirectional:
    num_buckets //= 2
    bucket += num_buckets if n < 0 else 0
    n = abs(n)
  else:
    n = max(n, 0)
  max_exact = num_buckets // 2
  if n < max_exact:
    return bucket + n
  large = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact))
  return bucket + min(large, num_buckets - 1)


@pytest.mark.parametrize('bidirectional', [True, False])
@pytest.mark.parametrize('num_buckets,max_distance', [(32, 128), (8, 20)])
def test_relative_position_bucket_matches_t5_formula(bidirectional, num_buckets, max_distance):
  positions = np.arange(-300, 301)
  got = model_lib.relative_position_bucket(positions, bidirectional, num_buckets, max_distance)
  expected = [t5_bucket(int(p), bidirectional, num_buckets, max_distance) for p in positions]
  np.testing.assert_array_equal(got, expected)


def test_relative_position_bucket_known_values():
  buckets = lambda rel, bi: model_lib.relative_position_bucket(np.array(rel), bi).tolist()
  # key before the query -> 0..15, after -> 16..31; 8 exact distances per side, then log-spaced up to 128.
  assert buckets([0, -1, -7, -8, -16, -127, -128, -1000], True) == [0, 1, 7, 8, 10, 15, 15, 15]
  assert buckets([1, 7, 8, 16, 1000], True) == [17, 23, 24, 26, 31]
  # causal: every later key shares bucket 0; 16 exact distances, then log-spaced.
  assert buckets([5, 1, 0, -1, -15, -16, -32, -127, -128], False) == [0, 0, 0, 1, 15, 16, 21, 31, 31]


def test_relative_position_biases_full_and_step_agree():
  module = model_lib.RelativePositionBiases(num_buckets=32, max_distance=128, num_heads=3)
  variables = module.init(jax.random.PRNGKey(0), 5, 5)
  table = np.asarray(variables['params']['rel_embedding'])
  for bidirectional in (True, False):
    full = np.asarray(module.apply(variables, 20, 20, bidirectional))
    assert full.shape == (1, 3, 20, 20)
    i, j = 4, 17
    bucket = model_lib.relative_position_bucket(np.array(j - i), bidirectional)
    np.testing.assert_allclose(full[0, :, i, j], table[:, bucket])
    for query in (0, 7, 19):
      row = module.apply(variables, jnp.int32(query), 20, bidirectional, method='step')
      np.testing.assert_allclose(row[0, :, 0], full[0, :, query], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------
# Presets and configs.
# ---------------------------------------------------------------------------------------------------------------
def test_presets_follow_table5_and_t5x():
  t5, gen, rtd = config_lib.preset('base')
  assert (t5.num_encoder_layers, t5.num_heads, t5.emb_dim, t5.mlp_dim) == (12, 12, 768, 3072)
  assert (gen.num_layers, gen.mlp_dim, rtd.mlp_dim, rtd.activation) == (4, 1024, 3072, 'gelu')
  assert t5.mlp_activations == ('relu',) and t5.logits_via_embedding and not gen.tied_output
  t5, gen, rtd = config_lib.preset('large')
  assert (t5.num_decoder_layers, t5.num_heads, t5.emb_dim, t5.mlp_dim) == (24, 16, 1024, 4096)
  assert (gen.num_layers, gen.mlp_dim, rtd.mlp_dim) == (6, 2048, 4096)
  t5 = config_lib.t5_preset('small', 't5_1_1')
  assert (t5.emb_dim, t5.mlp_dim, t5.num_heads, t5.num_encoder_layers) == (512, 1024, 6, 8)
  assert t5.mlp_activations == ('gelu', 'linear') and not t5.logits_via_embedding
  assert config_lib.t5_preset('large', 't5_1_1').mlp_dim == 2816


def test_unknown_preset_names_and_bad_fields_raise():
  with pytest.raises(ValueError, match="unknown size 'huge'"):
    config_lib.preset('huge')
  with pytest.raises(ValueError, match="unknown version 't5_2'"):
    config_lib.preset('base', 't5_2')
  with pytest.raises(ValueError, match='mlp_activations'):
    config_lib.T5Config(64, 8, 2, 4, 16, 1, 1, mlp_activations=('swish',))
  with pytest.raises(ValueError, match='dtype'):
    config_lib.T5Config(64, 8, 2, 4, 16, 1, 1, dtype='float16')
  with pytest.raises(ValueError, match='num_layers'):
    config_lib.GeneratorConfig(num_layers=0, mlp_dim=4)


def test_presets_are_gin_configurable():
  import gin
  gin.clear_config()
  try:
    gin.parse_config("""
        spactor.config.preset.size = 'small'
        spactor.config.preset.version = 't5_1_1'
        spactor.config.preset.vocab_size = 256
    """)
    t5, _, _ = config_lib.preset()
    assert (t5.emb_dim, t5.vocab_size, t5.mlp_activations) == (512, 256, ('gelu', 'linear'))
  finally:
    gin.clear_config()


def train_losses(loss_fn, params, steps: int, learning_rate: float = 0.03) -> list[float]:
  """Per-step losses of `steps` Adafactor steps on loss_fn(params, rng), a fresh batch from each step's rng."""
  tx = optax.adafactor(learning_rate, decay_rate=0.8, clipping_threshold=1.0, momentum=None)

  @jax.jit
  def step(params, opt_state, rng):
    loss, grads = jax.value_and_grad(loss_fn)(params, rng)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state, losses = tx.init(params), []
  for i in range(steps):
    params, opt_state, loss = step(params, opt_state, jax.random.PRNGKey(10 + i))
    losses.append(float(loss))
  return losses


def test_decoder_learns_to_copy_the_encoder_input():
  """Random tokens carry no information but through cross-attention: a loss far below ln(V) after a few hundred
  steps shows the encoder output reaches the decoder (a masked or misrouted cross-attention stays at ln(V))."""
  vocab, length, batch_size = 32, 8, 32
  model = model_lib.SpacTor(config_lib.preset('micro', vocab_size=vocab).t5)

  def batch(rng):
    tokens = jax.random.randint(rng, (batch_size, length), 2, vocab)
    return {'encoder_input_tokens': tokens, 'decoder_target_tokens': tokens,
            'decoder_input_tokens': jnp.pad(tokens[:, :-1], ((0, 0), (1, 0))),
            'decoder_loss_weights': jnp.ones(tokens.shape, jnp.float32)}

  example = batch(jax.random.PRNGKey(0))
  params = model.init(jax.random.PRNGKey(1), example['encoder_input_tokens'], example['decoder_input_tokens'],
                      example['decoder_target_tokens'])['params']
  losses = train_losses(lambda p, rng: stages.sc_loss(model, p, batch(rng), rng, False, z_loss=0.0)[0], params,
                        steps=300)
  chance = math.log(vocab - 2)
  assert losses[0] > 0.9 * chance
  assert np.mean(losses[-10:]) < 0.3 * chance, losses[::50]


def test_generator_learns_from_its_context():
  """Each [M] hides the second of a pair of equal tokens (x1 x1 x2 x2 ...): only the left neighbour tells it, so a
  loss near 0 shows G attends to its context through the projected [M] positions (a unigram guess stays at
  ln 28)."""
  vocab, length, batch_size, mask_id = 40, 16, 32, 39
  model = model_lib.SpacTor(*config_lib.preset('micro', vocab_size=vocab))

  def loss_fn(params, rng):
    pair_rng, mask_rng = jax.random.split(rng)
    clean = jnp.repeat(jax.random.randint(pair_rng, (batch_size, length // 2), 2, 30), 2, axis=1)
    mlm_mask = (jnp.arange(length) % 2 == 1)[None, :] & (jax.random.uniform(mask_rng, (batch_size, length)) < 0.5)
    positions, valid = objectives.masked_positions(mlm_mask, length // 2)
    logits = model.apply({'params': params}, jnp.where(mlm_mask, mask_id, clean), enable_dropout=False,
                         predict_positions=positions, method='generator_logits')
    return objectives.generator_loss(logits, objectives.gather(clean, positions), valid)[0]

  tokens = jnp.ones((batch_size, length), jnp.int32)
  params = model.init(jax.random.PRNGKey(1), tokens, tokens, tokens, method=model_lib.SpacTor.init_all)['params']
  losses = train_losses(loss_fn, params, steps=150)
  assert losses[0] > math.log(28)
  assert np.mean(losses[-10:]) < 0.05, losses[::25]


def _regenerate_golden():
  os.makedirs(GOLDEN_DIR, exist_ok=True)
  for version in VERSIONS:
    for size in config_lib.SIZES:
      shapes = flat_shapes(abstract_stage1(size, version)['params'])
      path = os.path.join(GOLDEN_DIR, f'params_{version}_{size}.json')
      lines = [f'  {json.dumps(name)}: {json.dumps(shape)}' for name, shape in sorted(shapes.items())]
      with open(path, 'w') as f:
        f.write('{\n' + ',\n'.join(lines) + '\n}\n')
      print(f'{path}: {len(shapes)} params, {sum(math.prod(s) for s in shapes.values()):,} scalars')


@pytest.mark.parametrize('policy', ['minimal', 'full'])
def test_remat_policies_keep_params_and_give_the_same_gradients(policy):
  """Rematerialized layers (T5Config.remat_policy) have the same parameter names and the same loss and gradients
  of every head, dropout included (the recomputation must draw the same masks); the backward pass does recompute
  (a checkpoint in the jaxpr)."""
  model, variables = stage1('t5_1_1')
  remat_model = model_lib.SpacTor(*tiny('t5_1_1', dropout_rate=0.1, remat_policy=policy))
  reference_model = model_lib.SpacTor(*tiny('t5_1_1', dropout_rate=0.1))
  enc, dec = dummy_inputs()
  remat_shapes = jax.eval_shape(lambda: remat_model.init(jax.random.PRNGKey(0), enc, dec, dec,
                                                          method=model_lib.SpacTor.init_all))
  assert flat_shapes(remat_shapes['params']) == flat_shapes(variables['params'])
  enc, dec = random_tokens(10, (BATCH, ENC_LEN)), random_tokens(11, (BATCH, DEC_LEN))
  rng = jax.random.key(3, impl='rbg')

  def loss(module, params):
    out = _heads(module, {'params': params}, enc, dec, dec, dropout_rng=rng)
    return sum(jnp.sum(jnp.sin(out[k])) for k in ('logits', 'generator_logits', 'rtd_logits'))

  grad = {name: fast_jit(jax.value_and_grad(functools.partial(loss, module)))(variables['params'])
          for name, module in (('remat', remat_model), ('reference', reference_model))}
  np.testing.assert_allclose(grad['remat'][0], grad['reference'][0], rtol=1e-6)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=2e-5), grad['remat'][1],
               grad['reference'][1])
  jaxpr = str(jax.make_jaxpr(jax.grad(functools.partial(loss, remat_model)))(variables['params']))
  assert 'remat' in jaxpr


def test_unknown_remat_policy_is_named():
  with pytest.raises(ValueError, match='remat_policy.*dots'):
    config_lib.preset('micro', remat_policy='dots')


if __name__ == '__main__':
  if sys.argv[1:] != ['--regen-golden']:
    sys.exit(__doc__)
  _regenerate_golden()
