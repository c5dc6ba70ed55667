"""The fused attention implementations compute the plain (reference) attention's function, values and gradients.

On this CPU jax.nn.dot_product_attention runs XLA's implementation with exactly the arguments a GPU hands to
cuDNN (bias, lengths and causal flag instead of a dense mask, lengths padded to a multiple); the Pallas TPU
kernel runs in its interpret mode. Outputs at padding queries are not compared: nothing valid reads them.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spactor import config as config_lib, model as model_lib

BATCH, Q_LEN, K_LEN, HEADS, HEAD_DIM = 3, 7, 9, 2, 8
TOL = dict(rtol=2e-5, atol=2e-5)


def _tokens(rng, length, valid_lengths):
  tokens = rng.integers(3, 50, size=(len(valid_lengths), length))
  return np.where(np.arange(length)[None] < np.asarray(valid_lengths)[:, None], tokens, 0).astype(np.int32)


def _qkv_bias(seed=0, q_len=Q_LEN, k_len=K_LEN):
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  query = jax.random.normal(keys[0], (BATCH, q_len, HEADS, HEAD_DIM))
  key = jax.random.normal(keys[1], (BATCH, k_len, HEADS, HEAD_DIM))
  value = jax.random.normal(keys[2], (BATCH, k_len, HEADS, HEAD_DIM))
  bias = jax.random.normal(keys[3], (1, HEADS, q_len, k_len))
  return query, key, value, bias


def _masks():
  """name -> (AttentionMask, q_len, k_len, [batch, q] validity of the queries)."""
  rng = np.random.default_rng(0)
  enc = _tokens(rng, K_LEN, [K_LEN, 5, 1])
  tgt = _tokens(rng, Q_LEN, [Q_LEN, 4, 2])
  enc_seg = np.where(enc > 0, 1 + (np.arange(K_LEN) >= 3), 0).astype(np.int32)  # two packed segments a row
  tgt_seg = np.where(tgt > 0, 1 + (np.arange(Q_LEN) >= 2), 0).astype(np.int32)
  return {
      'encoder_padding': (model_lib.encoder_attention_mask(enc), K_LEN, K_LEN, enc > 0),
      'encoder_packed': (model_lib.encoder_attention_mask(enc, enc_seg), K_LEN, K_LEN, enc > 0),
      'decoder_causal_padding': (model_lib.decoder_attention_mask(tgt), Q_LEN, Q_LEN, tgt > 0),
      'decoder_packed': (model_lib.decoder_attention_mask(tgt, tgt_seg), Q_LEN, Q_LEN, tgt > 0),
      'cross_padding': (model_lib.cross_attention_mask(tgt, enc), Q_LEN, K_LEN, tgt > 0),
      'cross_packed': (model_lib.cross_attention_mask(tgt, enc, tgt_seg, enc_seg), Q_LEN, K_LEN, tgt > 0),
  }


def _value_and_grads(attention_fn, mask, q_len, k_len, valid):
  """Outputs at valid queries and the gradients (q, k, v, bias) of a random function of them (jitted)."""
  query, key, value, bias = _qkv_bias(q_len=q_len, k_len=k_len)
  probe = jax.random.normal(jax.random.PRNGKey(9), query.shape) * valid[:, :, None, None]

  @jax.jit
  def value_and_grads(q, k, v, b, m):
    def loss(q, k, v, b):
      out = attention_fn(q, k, v, b, m)
      return jnp.sum(out * probe), out
    return jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)(q, k, v, b)

  (_, out), grads = value_and_grads(query, key, value, bias, mask)
  return np.asarray(out)[valid], [np.asarray(g) for g in grads]


def _plain(q, k, v, bias, mask):
  return model_lib.plain_attention(q, k, v, bias, mask, jnp.float32)


def _assert_same_function(attention_fn, mask, q_len, k_len, valid, tol, what=''):
  out, grads = _value_and_grads(attention_fn, mask, q_len, k_len, valid)
  ref_out, ref_grads = _value_and_grads(_plain, mask, q_len, k_len, valid)
  np.testing.assert_allclose(out, ref_out, err_msg=what, **tol)
  for grad, ref_grad, name in zip(grads, ref_grads, ('query', 'key', 'value', 'bias')):
    np.testing.assert_allclose(grad, ref_grad, err_msg=f'{what} d{name}', **tol)
  assert np.abs(ref_grads[3]).max() > 0.1  # the bias gradient is there to compare


@pytest.mark.parametrize('length_multiple', [1, 4])  # 4: lengths 7 and 9 padded to 8 and 12, as for cuDNN
def test_dot_product_attention_matches_plain(length_multiple):
  fused = lambda q, k, v, b, m: model_lib.fused_dot_product_attention(
      q, k, v, b, m, jnp.float32, implementation='xla', length_multiple=length_multiple)
  for name, (mask, q_len, k_len, valid) in _masks().items():
    _assert_same_function(fused, mask, q_len, k_len, valid, TOL, name)


def test_masks_forms_agree():
  """Lengths + causal flag, and segments, describe the dense mask on every valid query."""
  for name, (mask, q_len, k_len, valid) in _masks().items():
    dense = np.asarray(mask.mask)[:, 0]
    segments = np.asarray(mask.q_segments)[:, :, None] == np.asarray(mask.kv_segments)[:, None, :]
    if mask.causal:
      segments &= np.tril(np.ones((q_len, k_len), bool))
    np.testing.assert_array_equal(segments[valid], dense[valid], err_msg=name)
    if mask.q_lengths is not None:
      from_lengths = ((np.arange(q_len)[None, :, None] < np.asarray(mask.q_lengths)[:, None, None])
                      & (np.arange(k_len)[None, None, :] < np.asarray(mask.kv_lengths)[:, None, None]))
      if mask.causal:
        from_lengths &= np.tril(np.ones((q_len, k_len), bool))
      np.testing.assert_array_equal(from_lengths[valid], dense[valid], err_msg=name)
    assert (mask.q_lengths is None) == name.endswith('packed'), name


def test_cudnn_gets_a_bf16_bias_even_lengths_and_no_dense_mask(monkeypatch):
  """What a GPU hands to cuDNN (recorded here, not run): bias in bf16, lengths padded to even, lengths not a mask."""
  calls = []

  def record(query, key, value, bias=None, mask=None, **kwargs):
    calls.append(dict(query=query, key=key, bias=bias, mask=mask, **kwargs))
    return jnp.zeros_like(query)

  monkeypatch.setattr(jax.nn, 'dot_product_attention', record)
  monkeypatch.setattr(model_lib, 'dot_product_attention_backend', lambda dtype, head_dim: 'cudnn')
  for name in ('decoder_causal_padding', 'cross_padding', 'encoder_packed'):
    mask, q_len, k_len, _ = _masks()[name]
    q, k, v, bias = _qkv_bias(q_len=q_len, k_len=k_len)
    out = model_lib.fused_dot_product_attention(q, k, v, bias, mask, jnp.bfloat16)
    call = calls.pop()
    assert out.shape == (BATCH, q_len, HEADS, HEAD_DIM) and out.dtype == jnp.bfloat16
    assert call['implementation'] == 'cudnn' and call['scale'] == 1.0
    assert call['bias'].dtype == call['query'].dtype == jnp.bfloat16
    even = lambda n: n + n % 2
    assert call['query'].shape[1] == even(q_len) and call['key'].shape[1] == even(k_len)
    assert call['bias'].shape == (1, HEADS, even(q_len), even(k_len))
    if name.endswith('packed'):
      assert call['mask'].shape == (BATCH, 1, even(q_len), even(k_len)) and not call['mask'][:, :, q_len:].any()
    else:
      assert call['mask'] is None and call['is_causal'] == mask.causal
      np.testing.assert_array_equal(call['key_value_seq_lengths'], mask.kv_lengths)


def test_tpu_flash_kernel_matches_plain_in_interpret_mode():
  from jax.experimental.pallas import tpu as pltpu
  with pltpu.force_tpu_interpret_mode():
    for name in ('cross_packed', 'decoder_causal_padding'):  # segment ids for padding and packing; causal flag
      mask, q_len, k_len, valid = _masks()[name]
      _assert_same_function(lambda *a: model_lib.tpu_flash_attention(*a, jnp.float32), mask, q_len, k_len, valid,
                            dict(rtol=1e-4, atol=1e-4), name)


# --- the whole model ------------------------------------------------------------------------------------------


def _micro(impl):
  t5 = config_lib.preset('micro', vocab_size=64).t5
  return model_lib.SpacTor(dataclasses.replace(t5, attention_impl=impl, num_encoder_layers=1, num_decoder_layers=1))


def _batch():
  rng = np.random.default_rng(1)
  enc = _tokens(rng, 12, [12, 8])
  tgt = _tokens(rng, 6, [6, 3])
  return enc, np.pad(tgt, ((0, 0), (1, 0)))[:, :-1], tgt


def test_model_logits_and_gradients_match_plain():
  enc, dec_in, tgt = _batch()
  params = jax.jit(_micro('plain').init)(jax.random.PRNGKey(0), enc, dec_in, tgt)['params']
  valid = tgt > 0

  def loss_and_logits(impl):
    def loss(p):
      logits = _micro(impl).apply({'params': p}, enc, dec_in, tgt, enable_dropout=False)
      nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), tgt[..., None], -1)[..., 0]
      return jnp.sum(nll * valid), logits
    (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return value, np.asarray(logits)[valid], grads

  value, logits, grads = loss_and_logits('dot_product_attention')
  ref_value, ref_logits, ref_grads = loss_and_logits('plain')
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  np.testing.assert_allclose(logits, ref_logits, **TOL)
  flat, ref_flat = jax.tree_util.tree_leaves_with_path(grads), jax.tree_util.tree_leaves(ref_grads)
  for (path, grad), ref_grad in zip(flat, ref_flat):
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path))
  relpos = ref_grads['encoder']['relpos_bias']['rel_embedding']
  assert np.abs(relpos).max() > 0  # the relative-position bias learns through the fused path too


def test_kv_cache_decoding_matches_plain():
  """decode=True: the call that creates the cache runs the fused path (full-length, causal); the steps after it
  run the plain one and give the same logits."""
  enc, dec_in, tgt = _batch()
  params = jax.jit(_micro('plain').init)(jax.random.PRNGKey(0), enc, dec_in, tgt)['params']

  def decoder(impl):
    module = _micro(impl)
    encoded = jax.jit(functools.partial(module.apply, enable_dropout=False, method=model_lib.SpacTor.encode))(
        {'params': params}, enc)
    return encoded, jax.jit(lambda tokens, cache=None, **kw: module.apply(
        {'params': params, **({'cache': cache} if cache else {})}, encoded, enc, tokens, tokens, decode=True,
        enable_dropout=False, mutable=['cache'], method=model_lib.SpacTor.decode, **kw),
        static_argnames='max_decode_length')

  _, decode = decoder('dot_product_attention')
  created, variables = decode(dec_in)
  ref_created, _ = decoder('plain')[1](dec_in)
  np.testing.assert_allclose(created, ref_created, **TOL)
  cache, steps = variables['cache'], []
  for i in range(dec_in.shape[1]):
    logits, variables = decode(dec_in[:, i:i + 1], cache, max_decode_length=dec_in.shape[1])
    cache = variables['cache']
    steps.append(np.asarray(logits[:, 0]))
  np.testing.assert_allclose(np.stack(steps, 1), created, rtol=1e-4, atol=1e-4)


def test_unknown_attention_impl_is_named():
  with pytest.raises(ValueError, match='attention_impl.*splash'):
    config_lib.preset('micro', attention_impl='splash')


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_softmax_with_its_gradient_from_the_output_matches_autodiff(dtype):
  """model.softmax's value is jax.nn.softmax's; its gradient y·(g - Σ g·y) is autodiff's of exp / sum, also for
  masked logits (NEG_INF), a row masked everywhere (uniform weights) and a large logit."""
  logits = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 5, 6)) * 3
  logits = logits.at[0, :, :, 4:].set(model_lib.NEG_INF).at[1, 0, 2].set(model_lib.NEG_INF)
  logits = logits.at[2, 1, 3, 0].set(80.0).astype(dtype)
  probe = jax.random.normal(jax.random.PRNGKey(1), logits.shape).astype(dtype)

  def value_and_grad(softmax):
    return jax.value_and_grad(lambda x: jnp.sum(softmax(x).astype(jnp.float32) * probe))(logits)

  (value, grad), (ref_value, ref_grad) = value_and_grad(model_lib.softmax), value_and_grad(jax.nn.softmax)
  tol = TOL if dtype == jnp.float32 else dict(rtol=2e-2, atol=2e-2)
  np.testing.assert_allclose(np.asarray(model_lib.softmax(logits), np.float32),
                             np.asarray(jax.nn.softmax(logits), np.float32), **tol)
  np.testing.assert_allclose(float(value), float(ref_value), **tol)
  np.testing.assert_allclose(np.asarray(grad, np.float32), np.asarray(ref_grad, np.float32), **tol)
  assert grad.dtype == dtype
  assert np.abs(np.asarray(grad, np.float32)).max() > 0.1  # a gradient to compare
  np.testing.assert_allclose(np.asarray(grad, np.float32)[0, :, :, 4:], 0.0)  # masked logits get none
  np.testing.assert_allclose(np.asarray(grad, np.float32).sum(-1), 0.0, atol=1e-5 if dtype == jnp.float32 else 2e-2)
