"""Where gradients flow in SpacTor's hybrid objective, on a tiny model and a hand-made batch."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spactor import config as config_lib, model as model_lib, objectives, stages

VOCAB = 64
NUM_PIECES = 40  # ids >= 40 play the sentinels, [M] and padding ids


@pytest.fixture(scope='module')
def setup():
  t5 = config_lib.T5Config(vocab_size=VOCAB, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                           num_encoder_layers=1, num_decoder_layers=1)
  module = model_lib.SpacTor(t5, config_lib.GeneratorConfig(num_layers=1, mlp_dim=16),
                             config_lib.RTDHeadConfig(mlp_dim=16))
  rng = np.random.default_rng(0)
  clean = rng.integers(3, NUM_PIECES, size=(2, 12)).astype(np.int32)
  clean[:, -1] = 1  # EOS
  clean[1, -3:] = 0  # padding
  mlm = np.zeros_like(clean)
  mlm[:, [1, 4, 7]] = 1
  batch = {
      'encoder_input_tokens': jnp.asarray(np.where(mlm == 1, 60, clean)),
      'encoder_clean_tokens': jnp.asarray(clean),
      'encoder_mlm_mask': jnp.asarray(mlm),
      'decoder_target_tokens': jnp.asarray(rng.integers(3, NUM_PIECES, size=(2, 5)), dtype=jnp.int32),
  }
  batch['decoder_input_tokens'] = jnp.pad(batch['decoder_target_tokens'][:, :-1], ((0, 0), (1, 0)))
  batch['decoder_loss_weights'] = jnp.ones_like(batch['decoder_target_tokens'])
  params = jax.jit(lambda: module.init(  # compiled: faster than op by op on CPU
      jax.random.PRNGKey(0), batch['encoder_input_tokens'], batch['decoder_input_tokens'],
      batch['decoder_target_tokens'], method=model_lib.SpacTor.init_all)['params'])()
  loss_fn = functools.partial(stages.hybrid_loss, weights=stages.HybridWeights(10.0, 10.0),
                              allowed_ids=objectives.allowed_generator_ids(VOCAB, NUM_PIECES))
  return module, params, batch, loss_fn


@pytest.fixture(scope='module')
def grad_norms(setup):
  """{term: {top-level parameter group: gradient norm}} of each weighted term, in one compiled call."""
  module, params, batch, loss_fn = setup

  def norms(p):
    out = {}
    for term in ('gen_term', 'rtd_term', 'sc_term'):
      grads = jax.grad(lambda q, t=term: loss_fn(module, q, batch, jax.random.PRNGKey(1))[1][t])(p)
      out[term] = {k: jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(v))) for k, v in grads.items()}
    return out
  return jax.tree.map(float, jax.jit(norms)(params))


def _grad_norms_of(term, grad_norms):
  return grad_norms[term]


def test_discriminator_losses_send_no_gradient_to_the_generator(grad_norms):
  for term in ('rtd_term', 'sc_term'):
    norms = _grad_norms_of(term, grad_norms)
    assert norms['generator'] == 0.0, term
    assert norms['encoder'] > 0.0, term


def test_generator_loss_reaches_only_generator_and_shared_embedder(grad_norms):
  norms = _grad_norms_of('gen_term', grad_norms)
  assert norms['generator'] > 0 and norms['token_embedder'] > 0
  assert norms['encoder'] == 0 and norms['decoder'] == 0 and norms['rtd_head'] == 0


@pytest.mark.parametrize('term', ['gen_term', 'rtd_term', 'sc_term'])
def test_shared_embedder_learns_from_every_term(grad_norms, term):
  assert _grad_norms_of(term, grad_norms)['token_embedder'] > 0


def test_rtd_loss_sends_no_gradient_to_the_decoder(grad_norms):
  assert _grad_norms_of('rtd_term', grad_norms)['decoder'] == 0


def test_total_is_weighted_sum_of_terms(setup):
  module, params, batch, loss_fn = setup
  total, m = jax.jit(lambda p: loss_fn(module, p, batch, jax.random.PRNGKey(3)))(params)
  gen = m['gen_loss_sum'] / m['gen_count']
  rtd = m['rtd_loss_sum'] / m['rtd_count']
  np.testing.assert_allclose(m['gen_term'], gen, rtol=1e-5)
  np.testing.assert_allclose(m['rtd_term'], 10 * rtd, rtol=1e-5)
  np.testing.assert_allclose(total, m['gen_term'] + m['rtd_term'] + m['sc_term'], rtol=1e-6)
  # RTD averages over the 2*12 - 3 non-padding positions; L_G over the 6 [M] positions.
  assert m['rtd_count'] == 21 and m['gen_count'] == 6


def test_sc_stage_runs_on_the_plain_t5_with_stage_one_params_dropped(setup):
  module, params, batch, _ = setup
  plain = model_lib.SpacTor(module.config)
  loss, metrics = stages.sc_loss(plain, stages.drop_stage_1_params(params), stages.clean_batch(batch),
                                 jax.random.PRNGKey(0))
  assert np.isfinite(loss) and metrics['sc_count'] == 10


def test_projecting_only_mask_positions_gives_the_same_generator_loss(setup):
  module, params, batch, loss_fn = setup
  _, full = loss_fn(module, params, batch, jax.random.PRNGKey(4))
  _, gathered = loss_fn(module, params, batch, jax.random.PRNGKey(4), max_predictions=4)
  np.testing.assert_allclose(gathered['gen_loss_sum'], full['gen_loss_sum'], rtol=1e-5)
  assert gathered['gen_count'] == full['gen_count'] == 6
  assert gathered['replaced_count'] == 6


class _InputSpy:
  """Wraps a module, recording the token ids each named method is applied to (its first positional argument)."""

  def __init__(self, module):
    self.module, self.seen = module, {}

  def apply(self, variables, *args, method=None, **kwargs):
    if method in ('generator_logits', 'encode'):
      self.seen[method] = np.asarray(args[0])
    return self.module.apply(variables, *args, method=method, **kwargs)


def test_generator_reads_the_masked_input_and_the_discriminator_the_generator_filled_one(setup):
  """G sees X_c^MLM; D's encoder sees X̂_c: X_c off the [M] positions, G's samples on them (never [M])."""
  module, params, batch, loss_fn = setup
  spy = _InputSpy(module)
  _, metrics = loss_fn(spy, params, batch, jax.random.PRNGKey(5))
  clean, mlm = np.asarray(batch['encoder_clean_tokens']), np.asarray(batch['encoder_mlm_mask']).astype(bool)
  np.testing.assert_array_equal(spy.seen['generator_logits'], batch['encoder_input_tokens'])  # X_c^MLM, not X_c
  filled = spy.seen['encode']
  np.testing.assert_array_equal(filled[~mlm], clean[~mlm])
  assert (filled[mlm] != 60).all()  # no [M] reaches D
  # An untrained generator over 38 pieces misses most tokens: X̂_c differs from X_c exactly where "replaced".
  assert int((filled != clean).sum()) == int(metrics['replaced_sum']) > 0


def test_paper_normalization_weighs_per_token_rtd_and_sc_by_lambda(setup):
  """example_sum: each term is its sum over positions per example, so λ1 and λ2 weigh per-token sums (Eq. 9)."""
  module, params, batch, _ = setup
  loss_fn = functools.partial(stages.hybrid_loss, weights=stages.HybridWeights(2.0, 3.0), z_loss=0.0,
                              allowed_ids=objectives.allowed_generator_ids(VOCAB, NUM_PIECES),
                              normalization='example_sum')
  total, m = loss_fn(module, params, batch, jax.random.PRNGKey(3))
  rows = batch['encoder_input_tokens'].shape[0]
  np.testing.assert_allclose(m['gen_term'], m['gen_loss_sum'] / rows, rtol=1e-5)
  np.testing.assert_allclose(m['rtd_term'], 2.0 * m['rtd_loss_sum'] / rows, rtol=1e-5)
  np.testing.assert_allclose(m['sc_term'], 3.0 * m['sc_loss_sum'] / rows, rtol=1e-5)
  np.testing.assert_allclose(total, (m['gen_loss_sum'] + 2 * m['rtd_loss_sum'] + 3 * m['sc_loss_sum']) / rows,
                             rtol=1e-5)


def test_stage_two_loss_is_the_sc_weight_times_l_sc(setup):
  module, params, batch, _ = setup
  plain, kept, clean = model_lib.SpacTor(module.config), stages.drop_stage_1_params(params), stages.clean_batch(batch)
  one, metrics = stages.sc_loss(plain, kept, clean, jax.random.PRNGKey(0), z_loss=0.0, normalization='example_sum')
  ten, _ = stages.sc_loss(plain, kept, clean, jax.random.PRNGKey(0), z_loss=0.0, normalization='example_sum',
                          sc_weight=10.0)
  np.testing.assert_allclose(one, metrics['sc_loss_sum'] / 2, rtol=1e-5)
  np.testing.assert_allclose(ten, 10 * one, rtol=1e-6)
