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
  params = module.init(jax.random.PRNGKey(0), batch['encoder_input_tokens'], batch['decoder_input_tokens'],
                       batch['decoder_target_tokens'], method=model_lib.SpacTor.init_all)['params']
  loss_fn = functools.partial(stages.hybrid_loss, weights=stages.HybridWeights(10.0, 10.0),
                              allowed_ids=objectives.allowed_generator_ids(VOCAB, NUM_PIECES))
  return module, params, batch, loss_fn


def _grad_norms_of(term, setup):
  module, params, batch, loss_fn = setup
  grads = jax.grad(lambda p: loss_fn(module, p, batch, jax.random.PRNGKey(1))[1][term])(params)
  return {k: float(jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(v)))) for k, v in grads.items()}


def test_discriminator_losses_send_no_gradient_to_the_generator(setup):
  for term in ('rtd_term', 'sc_term'):
    norms = _grad_norms_of(term, setup)
    assert norms['generator'] == 0.0, term
    assert norms['encoder'] > 0.0, term


def test_generator_loss_reaches_only_generator_and_shared_embedder(setup):
  norms = _grad_norms_of('gen_term', setup)
  assert norms['generator'] > 0 and norms['token_embedder'] > 0
  assert norms['encoder'] == 0 and norms['decoder'] == 0 and norms['rtd_head'] == 0


@pytest.mark.parametrize('term', ['gen_term', 'rtd_term', 'sc_term'])
def test_shared_embedder_learns_from_every_term(setup, term):
  assert _grad_norms_of(term, setup)['token_embedder'] > 0


def test_rtd_loss_sends_no_gradient_to_the_decoder(setup):
  assert _grad_norms_of('rtd_term', setup)['decoder'] == 0


def test_total_is_weighted_sum_of_terms(setup):
  module, params, batch, loss_fn = setup
  total, m = loss_fn(module, params, batch, jax.random.PRNGKey(3))
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
