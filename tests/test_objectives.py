"""Exact values of each loss term on tiny inputs, sampling semantics, and the stage-switch helpers."""
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from spactor import checkpointing, flops, objectives, stages, train, trainer


def test_token_cross_entropy_matches_log_softmax():
  logits = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 7))
  targets = jnp.array([[0, 6, 3], [1, 1, 2]])
  expected = -np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), np.asarray(targets)[..., None], -1)[..., 0]
  np.testing.assert_allclose(objectives.token_cross_entropy(logits, targets), expected, rtol=1e-5)


def _reference_cross_entropy(logits, targets, z_loss):
  """The textbook form (gather of log-softmax, z-loss on logsumexp), differentiated by autodiff."""
  log_z = jax.nn.logsumexp(logits, axis=-1)
  return log_z - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0] + z_loss * jnp.square(log_z)


@pytest.mark.parametrize('z_loss', [0.0, 1e-4, 0.3])
def test_token_cross_entropy_value_and_gradient_match_autodiff_of_the_textbook_form(z_loss):
  """The hand-written backward pass (softmax·(1 + 2·z·log_z) - one_hot) against autodiff, with masked (-inf)
  vocabulary entries as the generator's restricted softmax has them, and weights on the tokens."""
  logits = 3.0 * jax.random.normal(jax.random.PRNGKey(1), (2, 5, 11))
  logits = logits.at[..., 9:].set(-jnp.inf)
  targets = jax.random.randint(jax.random.PRNGKey(2), (2, 5), 0, 9)
  weights = jax.random.uniform(jax.random.PRNGKey(3), (2, 5))

  def weighted(fn):
    return lambda l: jnp.sum(fn(l, targets, z_loss) * weights)

  ours = jax.value_and_grad(weighted(objectives.token_cross_entropy))(logits)
  reference = jax.value_and_grad(weighted(_reference_cross_entropy))(logits)
  np.testing.assert_allclose(ours[0], reference[0], rtol=1e-6)
  np.testing.assert_allclose(ours[1], reference[1], rtol=1e-5, atol=1e-7)
  assert np.all(np.asarray(ours[1])[..., 9:] == 0)


def test_accuracy_is_argmax_equals_target_with_ties_counted_correct():
  logits = jax.random.normal(jax.random.PRNGKey(4), (4, 6, 13))
  targets = jnp.argmax(logits, -1).at[:, ::2].set(3)  # half right by construction, the rest mostly wrong
  weights = jnp.ones((4, 6)).at[0].set(0.0)
  expected = np.sum((np.argmax(np.asarray(logits), -1) == np.asarray(targets)) * np.asarray(weights))
  assert float(objectives._accuracy_sum(logits, targets, weights)) == expected  # pylint: disable=protected-access
  tie = jnp.array([[[1.0, 2.0, 2.0]]])  # argmax takes index 1; index 2 ties with it and counts as correct too
  assert float(objectives._accuracy_sum(tie, jnp.array([[2]]), jnp.ones((1, 1)))) == 1.0  # pylint: disable=protected-access


def test_sc_loss_token_mean_is_mean_over_weighted_tokens_and_ignores_padding():
  # Uniform logits over 4 ids: every token costs log 4, whatever the target; padding must not count.
  logits = jnp.zeros((1, 3, 4))
  loss, metrics = objectives.sc_loss(logits, jnp.array([[1, 2, 0]]), jnp.array([[1, 1, 0]]), z_loss=0.0)
  assert loss == pytest.approx(np.log(4))
  assert metrics['sc_count'] == 2
  assert metrics['sc_loss_sum'] == pytest.approx(2 * np.log(4))


def test_z_loss_adds_square_of_log_partition():
  logits = jnp.zeros((1, 1, 4))
  loss, _ = objectives.sc_loss(logits, jnp.array([[1]]), jnp.array([[1]]), z_loss=0.5)
  assert loss == pytest.approx(np.log(4) + 0.5 * np.log(4) ** 2)


def test_generator_loss_counts_only_mask_positions():
  logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]]]))
  loss, metrics = objectives.generator_loss(logits, jnp.array([[0, 2]]), jnp.array([[1, 0]]))
  assert loss == pytest.approx(np.log(2))
  assert metrics['gen_count'] == 1 and metrics['gen_accuracy_sum'] == 1


def test_rtd_loss_exact_values():
  # logit 0 -> log 2 for either label; logit +20 on a replaced token ~ 0; the padding position is ignored.
  logits = jnp.array([[0.0, 20.0, -20.0, 5.0]])
  replaced = jnp.array([[False, True, False, True]])
  nonpad = jnp.array([[True, True, True, False]])
  mlm = jnp.array([[0, 1, 1, 0]])
  loss, metrics = objectives.rtd_loss(logits, replaced, nonpad, mlm)
  assert loss == pytest.approx(np.log(2) / 3, rel=1e-4)
  assert metrics['rtd_count'] == 3
  assert metrics['replaced_sum'] == 1 and metrics['replaced_count'] == 2
  assert metrics['rtd_recall_sum'] == 1 and metrics['rtd_recall_count'] == 1


def test_rtd_precision_and_f1_are_sums_over_counts():
  # Predicted replaced (logit > 0) at positions 0, 1, 4; replaced at 1, 2, 4; position 5 is padding.
  logits = jnp.array([[1.0, 2.0, -1.0, -3.0, 0.5, 9.0]])
  replaced = jnp.array([[False, True, True, False, True, True]])
  nonpad = jnp.array([[True, True, True, True, True, False]])
  _, metrics = objectives.rtd_loss(logits, replaced, nonpad, jnp.ones((1, 6)))
  summary = objectives.summarize(metrics)
  assert summary['rtd_precision'] == pytest.approx(2 / 3)  # TP = 2 of 3 predicted
  assert summary['rtd_recall'] == pytest.approx(2 / 3)  # 2 of 3 replaced found
  assert summary['rtd_f1'] == pytest.approx(2 * 2 / (3 + 3))
  assert summary['rtd_accuracy'] == pytest.approx(3 / 5)
  # Sums and counts add across batches: two copies give the same means.
  doubled = objectives.summarize(jax.tree.map(lambda x: 2 * x, metrics))
  assert doubled['rtd_f1'] == pytest.approx(summary['rtd_f1'])


def _three_terms(batch_copies: int, normalization: str):
  """L_SC, L_G and L_RTD on one hand-made example repeated `batch_copies` times."""
  tile = lambda x: jnp.tile(x, (batch_copies,) + (1,) * (x.ndim - 1))
  sc, _ = objectives.sc_loss(tile(jnp.zeros((1, 3, 4))), tile(jnp.array([[1, 2, 0]])), tile(jnp.array([[1, 1, 0]])),
                             z_loss=0.0, normalization=normalization)
  gen, _ = objectives.generator_loss(tile(jnp.zeros((1, 4, 8))), tile(jnp.array([[1, 2, 3, 4]])),
                                     tile(jnp.array([[1, 0, 0, 0]])), normalization)
  rtd, _ = objectives.rtd_loss(tile(jnp.zeros((1, 5))), tile(jnp.zeros((1, 5), bool)), tile(jnp.ones((1, 5), bool)),
                               tile(jnp.zeros((1, 5))), normalization)
  return np.array([sc, gen, rtd])


def test_paper_normalization_sums_over_positions_and_means_over_examples():
  """Eq. 4, 6, 8 are sums over positions; the batch's loss does not scale with its size."""
  # Uniform logits: each SC token costs log 4 (2 tokens), each [M] log 8 (1 position), each RTD position log 2 (5).
  per_example = np.array([2 * np.log(4), np.log(8), 5 * np.log(2)])
  np.testing.assert_allclose(_three_terms(1, 'example_sum'), per_example, rtol=1e-6)
  np.testing.assert_allclose(_three_terms(3, 'example_sum'), per_example, rtol=1e-6)
  np.testing.assert_allclose(_three_terms(3, 'batch_sum'), 3 * per_example, rtol=1e-6)  # t5x's default
  np.testing.assert_allclose(_three_terms(3, 'token_mean'), [np.log(4), np.log(8), np.log(2)], rtol=1e-6)
  assert objectives.PAPER_NORMALIZATION == 'example_sum'


def test_unknown_normalization_is_named():
  with pytest.raises(ValueError, match="loss normalization must be one of .*'per_batch'"):
    objectives.reduce_loss(jnp.ones((1, 2)), jnp.ones((1, 2)), 'per_batch')


def test_a_correct_sample_is_labelled_real():
  """ELECTRA: a position is replaced only if the sampled token differs from the original."""
  clean = jnp.array([[5, 6, 7, 8]])
  masked = jnp.array([[5, 99, 7, 99]])
  mlm = jnp.array([[0, 1, 0, 1]])
  # All mass on the original token at every position.
  logits = jnp.where(jax.nn.one_hot(clean, 10) > 0, 0.0, -1e9)
  filled, replaced = objectives.sample_replacements(jax.random.PRNGKey(0), logits, masked, clean, mlm)
  np.testing.assert_array_equal(filled, clean)
  assert not replaced.any()


def test_a_wrong_sample_is_labelled_replaced_and_other_positions_are_untouched():
  clean = jnp.array([[5, 6, 7, 8]])
  masked = jnp.array([[5, 99, 7, 99]])
  mlm = jnp.array([[0, 1, 0, 1]])
  logits = jnp.where(jax.nn.one_hot(jnp.full_like(clean, 3), 10) > 0, 0.0, -1e9)  # always samples id 3
  filled, replaced = objectives.sample_replacements(jax.random.PRNGKey(0), logits, masked, clean, mlm)
  np.testing.assert_array_equal(filled, [[5, 3, 7, 3]])
  np.testing.assert_array_equal(replaced, [[False, True, False, True]])


def test_sampling_follows_the_generator_distribution():
  probs = jnp.array([0.0, 0.0, 0.7, 0.2, 0.1])
  logits = jnp.broadcast_to(jnp.log(probs), (1, 20000, 5))
  tokens = jnp.full((1, 20000), 4)
  filled, _ = objectives.sample_replacements(jax.random.PRNGKey(1), logits, tokens, tokens, jnp.ones_like(tokens))
  freq = np.bincount(np.asarray(filled).ravel(), minlength=5) / 20000
  np.testing.assert_allclose(freq, probs, atol=0.015)


def test_restricted_generator_never_samples_special_ids():
  model_vocab, num_pieces = 16, 10  # ids 10.. are sentinels, [M] and padding ids
  allowed = objectives.allowed_generator_ids(model_vocab, num_pieces)
  np.testing.assert_array_equal(np.flatnonzero(allowed), np.arange(2, 10))
  logits = objectives.restrict_vocab(jnp.zeros((4, 500, model_vocab)), allowed)
  tokens = jnp.zeros((4, 500), jnp.int32)
  filled, _ = objectives.sample_replacements(jax.random.PRNGKey(2), logits, tokens, tokens, jnp.ones_like(tokens))
  assert int(filled.min()) >= 2 and int(filled.max()) < num_pieces


def test_combine_weights_terms():
  total, metrics = objectives.combine({'gen': (1.0, jnp.float32(2.0)), 'rtd': (10.0, jnp.float32(0.5))})
  assert total == pytest.approx(7.0)
  assert metrics['rtd_term'] == pytest.approx(5.0)


def test_summarize_turns_sums_into_means():
  out = objectives.summarize({'sc_loss_sum': 6.0, 'sc_accuracy_sum': 1.0, 'sc_count': 4.0,
                              'rtd_recall_sum': 1.0, 'rtd_recall_count': 2.0, 'loss': 3.0})
  assert out == {'sc_loss': 1.5, 'sc_accuracy': 0.25, 'rtd_recall': 0.5, 'loss': 3.0}


@pytest.mark.parametrize('bad', [-1.0, float('nan')])
def test_negative_lambda_is_rejected(bad):
  with pytest.raises(ValueError, match='lambda1'):
    stages.HybridWeights(lambda1=bad)


def test_clean_batch_puts_clean_tokens_in_the_encoder():
  batch = {'encoder_input_tokens': 1, 'encoder_clean_tokens': 2, 'encoder_mlm_mask': 3, 'decoder_target_tokens': 4}
  assert stages.clean_batch(batch) == {'encoder_input_tokens': 2, 'decoder_target_tokens': 4}


def test_stage_switch_keeps_discriminator_and_optimizer_slots_of_kept_params():
  params = {'token_embedder': {'embedding': jnp.ones((256, 8))}, 'encoder': {'w': jnp.ones((8, 200))},
            'decoder': {'w': jnp.ones((3,))}, 'generator': {'w': jnp.ones((8, 300))},
            'rtd_head': {'w': jnp.ones((8,))}}
  tx = optax.adafactor(1e-2)
  opt_state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  _, opt_state = tx.update(grads, opt_state, params)  # make slots non-trivial
  kept = stages.drop_stage_1_params(params)
  assert set(kept) == {'token_embedder', 'encoder', 'decoder'}
  carried = checkpointing.carry_optimizer_state(opt_state, kept, tx)
  assert jax.tree.structure(carried) == jax.tree.structure(tx.init(kept))
  assert int(carried[0].count) == 1
  np.testing.assert_array_equal(carried[0].v_row['encoder']['w'], opt_state[0].v_row['encoder']['w'])
  assert 'generator' not in carried[0].v_row and 'rtd_head' not in carried[0].v


def test_generator_lr_scale_scales_only_the_generators_updates_in_both_stages(tmp_path):
  """G's own step size: its updates are `scale` times those of one shared step size, every other update is
  unchanged (the shared embedder is D's), and the same optimizer carries across τ into the SC stage."""
  params = {'token_embedder': {'embedding': jnp.linspace(-1, 1, 256 * 8).reshape(256, 8)},
            'encoder': {'w': jnp.linspace(0.5, 2, 8 * 20).reshape(8, 20)},
            'generator': {'w': jnp.linspace(-2, 1, 8 * 30).reshape(8, 30)}, 'rtd_head': {'w': jnp.ones((8,))}}
  grads = jax.tree.map(lambda p: jnp.cos(p) + 0.1, params)

  def updates(scale):
    config = train.TrainConfig(model_dir=str(tmp_path), total_steps=4, tau=2, generator_lr_scale=scale)
    tx = trainer.make_optimizer(config)
    update, opt_state = tx.update(grads, tx.init(params), params)
    kept = stages.drop_stage_1_params(params)
    stage2_update, _ = tx.update(stages.drop_stage_1_params(grads),
                                 checkpointing.carry_optimizer_state(opt_state, kept, tx), kept)
    return update, stage2_update

  (plain, plain2), (scaled, scaled2) = updates(1.0), updates(3.0)
  np.testing.assert_allclose(scaled['generator']['w'], 3.0 * plain['generator']['w'], rtol=1e-6)
  assert float(jnp.abs(plain['generator']['w']).max()) > 0
  for name in ('token_embedder', 'encoder', 'rtd_head'):
    jax.tree.map(np.testing.assert_array_equal, scaled[name], plain[name])
  jax.tree.map(np.testing.assert_array_equal, scaled2, plain2)
  with pytest.raises(ValueError, match='generator_lr_scale'):
    train.TrainConfig(model_dir=str(tmp_path), total_steps=4, tau=2, generator_lr_scale=0.0)


def test_flops_of_a_dense_layer_and_attention_by_hand():
  assert flops.dense(3, 4, 5) == 2 * 3 * 4 * 5
  # 4 projections of 2*n*d*inner plus scores and values 2*(2*n*n*inner)
  assert flops.attention(2, 2, 4, 1, 4) == 4 * (2 * 2 * 4 * 4) + 2 * (2 * 2 * 2 * 4)


BASE = SimpleNamespace(vocab_size=32128, emb_dim=768, num_heads=12, head_dim=64, mlp_dim=3072, num_encoder_layers=12,
                       num_decoder_layers=12, mlp_activations=('relu',))
BASE_GENERATOR = SimpleNamespace(num_layers=4, mlp_dim=1024, num_heads=None, head_dim=None)
BASE_RTD_HEAD = SimpleNamespace(mlp_dim=3072)


def _by_hand_forward(L, T, V, d, inner, mlp, enc_layers, dec_layers, gen_layers, gen_mlp, rtd_mlp, gen_logits):
  """Forward FLOPs per example written out from the architecture (2 per multiply-add): D, and G + RTD head."""
  self_attention = lambda n: 2 * 4 * n * d * inner + 2 * 2 * n * n * inner
  cross_attention = 2 * 2 * T * d * inner + 2 * 2 * L * d * inner + 2 * 2 * T * L * inner
  encoder_layer = lambda mlp_dim: self_attention(L) + 2 * 2 * L * d * mlp_dim
  t5 = (enc_layers * encoder_layer(mlp) + dec_layers * (self_attention(T) + cross_attention + 2 * 2 * T * d * mlp)
        + 2 * T * d * V)
  extra = gen_layers * encoder_layer(gen_mlp) + 2 * gen_logits * d * V + 2 * L * d * rtd_mlp + 2 * L * rtd_mlp
  return t5, extra


def test_analytic_flops_of_base_are_pinned_exactly():
  """Our count: 3x forward, whole batch, the generator projecting only its k [M] positions (as the trainer runs)."""
  lengths, batch, k = flops.Lengths(inputs=512, targets=114), 2048, 78
  t5, extra = _by_hand_forward(512, 114, 32128, 768, 768, 3072, 12, 12, 4, 1024, 3072, gen_logits=k)
  sc = flops.sc_step_flops(BASE, lengths, batch)
  hybrid = flops.hybrid_step_flops(BASE, BASE_GENERATOR, BASE_RTD_HEAD, lengths, batch, logits_tokens=k)
  assert sc == 3 * batch * t5
  assert hybrid == 3 * batch * (t5 + extra)
  assert hybrid / sc == (t5 + extra) / t5  # 1.1803: what our trainer spends per stage-1 step


def test_paper_flops_count_reproduces_table_3():
  """Table 3: 1.6e4 (baseline) and 2.2e4 (SpacTor-Base stage 1) GFLOPs per step, per device at 32 examples."""
  lengths, (L, T, V, d) = flops.Lengths(inputs=512, targets=114), (512, 114, 32128, 768)
  t5, extra = _by_hand_forward(L, T, V, d, 768, 3072, 12, 12, 4, 1024, 3072, gen_logits=L)
  lookup = lambda n: 2 * n * V * d  # one-hot matmul, forward and the table's gradient: 2x
  sc = flops.paper_sc_step_flops(BASE, lengths)
  hybrid = flops.paper_hybrid_step_flops(BASE, BASE_GENERATOR, BASE_RTD_HEAD, lengths)
  assert sc == 32 * (3 * t5 + 2 * (lookup(L) + lookup(T)))
  assert hybrid == 32 * (3 * (t5 + extra) + 2 * (2 * lookup(L) + lookup(T)))
  assert round(sc / 1e9, -2) == 15600 and round(hybrid / 1e9, -2) == 21700
  assert f'{sc / 1e9:.1e}' == '1.6e+04' and f'{hybrid / 1e9:.1e}' == '2.2e+04'


def test_masked_positions_lists_mask_positions_first_and_pads_with_distinct_unmasked_ones():
  mask = jnp.array([[0, 1, 0, 1, 0, 0], [0, 0, 0, 0, 0, 1]])
  positions, valid = objectives.masked_positions(mask, 3)
  np.testing.assert_array_equal(positions, [[1, 3, 0], [5, 0, 1]])
  np.testing.assert_array_equal(valid, [[True, True, False], [True, False, False]])
  full, full_valid = objectives.masked_positions(mask, None)
  np.testing.assert_array_equal(full[1], np.arange(6))
  np.testing.assert_array_equal(full_valid, mask.astype(bool))


def test_scatter_writes_back_what_gather_read():
  x = jnp.array([[10, 11, 12, 13]])
  positions = jnp.array([[2, 0]])
  np.testing.assert_array_equal(objectives.gather(x, positions), [[12, 10]])
  np.testing.assert_array_equal(objectives.scatter(x, positions, jnp.array([[7, 8]])), [[8, 11, 7, 13]])
