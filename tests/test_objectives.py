"""Exact values of each loss term on tiny inputs, sampling semantics, and the stage-switch helpers."""
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from spactor import checkpointing, flops, objectives, stages


def test_token_cross_entropy_matches_log_softmax():
  logits = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 7))
  targets = jnp.array([[0, 6, 3], [1, 1, 2]])
  expected = -np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), np.asarray(targets)[..., None], -1)[..., 0]
  np.testing.assert_allclose(objectives.token_cross_entropy(logits, targets), expected, rtol=1e-5)


def test_sc_loss_is_mean_over_weighted_tokens_and_ignores_padding():
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


def test_flops_of_a_dense_layer_and_attention_by_hand():
  assert flops.dense(3, 4, 5) == 2 * 3 * 4 * 5
  # 4 projections of 2*n*d*inner plus scores and values 2*(2*n*n*inner)
  assert flops.attention(2, 2, 4, 1, 4) == 4 * (2 * 2 * 4 * 4) + 2 * (2 * 2 * 2 * 4)


def test_hybrid_over_sc_flops_ratio_for_base_is_near_table_3():
  """Table 3 reports x1.375 for SpacTor-Base stage 1 over SC; the analytic count lands near it."""
  config = SimpleNamespace(vocab_size=32128, emb_dim=768, num_heads=12, head_dim=64, mlp_dim=3072,
                           num_encoder_layers=12, num_decoder_layers=12, mlp_activations=('relu',))
  generator = SimpleNamespace(num_layers=4, mlp_dim=1024, num_heads=None, head_dim=None)
  lengths = flops.Lengths(inputs=512, targets=114)
  ratio = (flops.hybrid_step_flops(config, generator, SimpleNamespace(mlp_dim=3072), lengths, 2048)
           / flops.sc_step_flops(config, lengths, 2048))
  assert 1.25 < ratio < 1.4


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
