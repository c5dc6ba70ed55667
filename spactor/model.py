"""SpacTor-T5 in Flax linen: a T5 encoder-decoder (the discriminator D), the generator G and the RTD head.

The T5 follows t5x/examples/t5 (layer and parameter names, 2-D attention kernels, initializers), so t5x's
EncoderDecoderModel can drive `SpacTor` and t5x's Adafactor finds a factor rule for every parameter. Differences
from t5x's network, each for a reason:
- relative position biases are computed once per stack and shared by its layers, as in the T5 paper;
- the untied output projection is the top-level param `logits_dense` (t5x nests it in `decoder`), so the stage
  switch keeps exactly the top-level keys of a plain T5 (docs/design.md);
- token embedding is a gather, not a one-hot matmul (a one-hot of [batch, length, 32128] is waste on CPU and GPU;
  XLA partitions gathers of a vocab-sharded table);
- cached decoding projects the encoder output to cross-attention keys and values once (at step 0) and keeps them
  in the cache; t5x projects it again at every step, which dominates the cost of a decoding step.

Stage 1 (generator and rtd_head configs given) adds the params `generator` and `rtd_head`; with both None the
model is a plain T5 (the SC baseline and stage 2). `__call__` never touches stage-1 modules, so
`model.init(rng, enc, dec, tgt)` creates a plain T5's params; use `method=SpacTor.init_all` to create all.
"""
import dataclasses
import functools
import math
import operator
from typing import Any, Callable, Optional, Tuple

import flax.linen as nn
from flax import struct
from flax.linen import partitioning as nn_partitioning
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from spactor.config import GeneratorConfig, RTDHeadConfig, T5Config

Array = jax.Array
param_with_axes = nn_partitioning.param_with_axes
constrain = nn_partitioning.with_sharding_constraint

NEG_INF = -1e10  # additive bias of a masked attention logit; finite, so fully masked rows stay NaN-free

# Initializers of t5x/examples/t5.
embedding_init = nn.initializers.normal(stddev=1.0)
attention_kernel_init = nn.initializers.variance_scaling(1.0, 'fan_in', 'normal')
dense_kernel_init = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')
relpos_init = nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform')


def activation_fn(name: str) -> Callable[[Array], Array]:
  return (lambda x: x) if name == 'linear' else getattr(nn, name)


def _expand_to(x: Array, ndim: int) -> Array:
  """Leading singleton axes so a [features] vector broadcasts without rank promotion."""
  return x.reshape((1,) * (ndim - x.ndim) + x.shape)


# ---------------------------------------------------------------------------------------------------------------
# Masks (boolean, [batch, 1, q_len, k_len]) and their additive biases.
# ---------------------------------------------------------------------------------------------------------------
def attention_mask(query_input: Array, key_input: Array, pairwise_fn=jnp.logical_and) -> Array:
  """[batch, 1, q, k] mask from per-position [batch, q] and [batch, k] inputs."""
  return pairwise_fn(query_input[:, :, None], key_input[:, None, :])[:, None]


def encoder_self_mask(tokens: Array, segment_ids: Optional[Array] = None) -> Array:
  """Padding (token id 0) plus, for packed rows, attention only within a segment."""
  mask = attention_mask(tokens > 0, tokens > 0)
  if segment_ids is not None:
    mask = mask & attention_mask(segment_ids, segment_ids, jnp.equal)
  return mask


def causal_mask(length: int) -> Array:
  """[1, 1, length, length]: a query sees itself and earlier keys."""
  return jnp.asarray(np.tril(np.ones((length, length), dtype=bool)))[None, None]


def decoder_self_mask(target_tokens: Array, segment_ids: Optional[Array] = None) -> Array:
  """Causal, padding (of the targets: input tokens start with a 0 BOS) and packing mask."""
  mask = causal_mask(target_tokens.shape[-1]) & attention_mask(target_tokens > 0, target_tokens > 0)
  if segment_ids is not None:
    mask = mask & attention_mask(segment_ids, segment_ids, jnp.equal)
  return mask


def cross_mask(target_tokens: Array, input_tokens: Array, target_segment_ids: Optional[Array] = None,
               input_segment_ids: Optional[Array] = None) -> Array:
  mask = attention_mask(target_tokens > 0, input_tokens > 0)
  if input_segment_ids is not None:
    mask = mask & attention_mask(target_segment_ids, input_segment_ids, jnp.equal)
  return mask


def mask_to_bias(mask: Array, dtype) -> Array:
  return jnp.where(mask, 0.0, NEG_INF).astype(dtype)


@struct.dataclass
class AttentionMask:
  """Who attends to whom, in each form an attention implementation takes.

  `mask` (bool [batch|1, 1, q, k]) is the whole truth; the plain path adds it as a bias. Fused kernels read
  cheaper forms of the same mask: for rows that are not packed, the number of valid leading positions per row
  (`q_lengths`, `kv_lengths`: int32 [batch], at least 1) and a causal flag (cuDNN's padding and causal masks);
  `q_segments`/`kv_segments` (int32 [batch, q|k], 0 at padding; the TPU kernel). These forms agree with `mask`
  on every query that is not padding when padding sits only at the end of a row, as seqio's feature converters
  write it; queries at padding positions may differ (nothing valid reads them, so the loss and its gradients
  are the same).
  """
  mask: Array
  q_segments: Optional[Array] = None
  kv_segments: Optional[Array] = None
  q_lengths: Optional[Array] = None
  kv_lengths: Optional[Array] = None
  causal: bool = struct.field(pytree_node=False, default=False)


def _lengths(valid: Array) -> Array:
  """[batch] valid positions per row; at least 1, so no kernel sees a row without a key (NaN-free)."""
  return jnp.maximum(jnp.sum(valid, axis=-1, dtype=jnp.int32), 1)


def _segments(valid: Array, segment_ids: Optional[Array]) -> Array:
  ids = jnp.ones(valid.shape, jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
  return jnp.where(valid, ids, 0)


def encoder_attention_mask(tokens: Array, segment_ids: Optional[Array] = None) -> AttentionMask:
  valid, segments = tokens > 0, _segments(tokens > 0, segment_ids)
  lengths = _lengths(valid) if segment_ids is None else None
  return AttentionMask(encoder_self_mask(tokens, segment_ids), segments, segments, lengths, lengths)


def decoder_attention_mask(target_tokens: Array, segment_ids: Optional[Array] = None) -> AttentionMask:
  valid, segments = target_tokens > 0, _segments(target_tokens > 0, segment_ids)
  lengths = _lengths(valid) if segment_ids is None else None
  return AttentionMask(decoder_self_mask(target_tokens, segment_ids), segments, segments, lengths, lengths,
                       causal=True)


def cross_attention_mask(target_tokens: Array, input_tokens: Array, target_segment_ids: Optional[Array] = None,
                         input_segment_ids: Optional[Array] = None) -> AttentionMask:
  packed = input_segment_ids is not None
  q_segments = _segments(target_tokens > 0, target_segment_ids if packed else None)
  kv_segments = _segments(input_tokens > 0, input_segment_ids)
  return AttentionMask(cross_mask(target_tokens, input_tokens, target_segment_ids, input_segment_ids),
                       q_segments, kv_segments, None if packed else _lengths(target_tokens > 0),
                       None if packed else _lengths(input_tokens > 0))


# ---------------------------------------------------------------------------------------------------------------
# Attention implementations: softmax(q k^T + bias + mask) v, without T5's (folded-in) 1/sqrt(head_dim).
# ---------------------------------------------------------------------------------------------------------------
def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _pad_axis(x: Array, axis: int, size: int, value=0) -> Array:
  """x padded with `value` at the end of `axis` to `size`."""
  if x.shape[axis] == size:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, widths, constant_values=value)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def broadcast_batch(bias: Array, batch: int) -> Array:
  """[1, ...] -> [batch, ...]; the gradient sums over the batch as a matrix-vector product.

  Autodiff of an implicit broadcast sums the relative-position bias's gradient ([batch, heads, q, k], every layer)
  with a reduce that XLA:CPU fuses into the softmax gradient and runs slowly; as a dot with a ones vector the same
  sum takes about half the time of that softmax-plus-reduction (docs/benchmarks.md, section 2).
  """
  return jnp.broadcast_to(bias, (batch,) + bias.shape[1:])


def _broadcast_batch_fwd(bias: Array, batch: int):
  return broadcast_batch(bias, batch), None


def _broadcast_batch_bwd(batch: int, _, grad: Array):
  return (jnp.einsum('b,b...->...', jnp.ones((batch,), grad.dtype), grad)[None],)


broadcast_batch.defvjp(_broadcast_batch_fwd, _broadcast_batch_bwd)


@jax.custom_vjp
def softmax(logits: Array) -> Array:
  """jax.nn.softmax over the last axis, differentiated from its output alone: dx = y · (g - Σ g·y).

  jax's own derivative of softmax (unless the global flag jax_softmax_custom_jvp is set) differentiates exp / sum
  and keeps the exponentials and the sum for the backward pass, whose gradient XLA:CPU then computes with extra
  broadcasts of the sum's reciprocal; this form keeps one tensor, the weights the forward pass wrote anyway.
  """
  return jax.nn.softmax(logits)


def _softmax_fwd(logits: Array):
  weights = softmax(logits)
  return weights, weights


def _softmax_bwd(weights: Array, grad: Array):
  w, g = weights.astype(jnp.float32), grad.astype(jnp.float32)
  return ((w * (g - jnp.sum(g * w, axis=-1, keepdims=True))).astype(grad.dtype),)


softmax.defvjp(_softmax_fwd, _softmax_bwd)


def plain_attention(query: Array, key: Array, value: Array, bias: Optional[Array], mask: AttentionMask, dtype,
                    float32_logits: bool = False, dropout_fn: Optional[Callable[[Array], Array]] = None) -> Array:
  """The reference: [b, q, h, d] queries, [b, k, h, d] keys and values, bias [1|b, h, q, k] -> [b, q, h, d]."""
  if float32_logits:
    query, key = query.astype(jnp.float32), key.astype(jnp.float32)
  logits = jnp.einsum('bqhd,bkhd->bhqk', query, key)
  if bias is not None and bias.shape[0] == 1 < logits.shape[0]:
    bias = broadcast_batch(bias, logits.shape[0])
  for additive in (bias, mask_to_bias(mask.mask, dtype)):
    if additive is not None:
      logits = logits + additive.astype(logits.dtype)
  weights = softmax(logits).astype(dtype)
  if dropout_fn is not None:
    weights = dropout_fn(weights)
  return jnp.einsum('bhqk,bkhd->bqhd', weights, value)


def dot_product_attention_backend(dtype, head_dim: int) -> str:
  """jax.nn.dot_product_attention's `implementation`: 'cudnn' (flash attention) where jax runs on a GPU and
  cuDNN takes these shapes (bf16/fp16, head_dim a multiple of 8 up to 128), else 'xla' (jax's `None` is 'xla')."""
  half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
  on_gpu = jax.default_backend() == 'gpu'
  return 'cudnn' if on_gpu and half and head_dim % 8 == 0 and head_dim <= 128 else 'xla'


def fused_dot_product_attention(query: Array, key: Array, value: Array, bias: Optional[Array],
                                mask: AttentionMask, dtype, float32_logits: bool = False,
                                implementation: Optional[str] = None, length_multiple: Optional[int] = None) -> Array:
  """plain_attention's function through jax.nn.dot_product_attention (cuDNN flash attention on a GPU).

  The bias goes in the activation dtype (bf16 for cuDNN); an unpacked mask goes as lengths and a causal flag, so
  the kernel reads no [batch, 1, q, k] tensor. cuDNN's training kernels with a bias need even lengths: queries and
  keys are padded to `length_multiple` (default 2 for cuDNN), the padded keys masked, the padded queries dropped.
  """
  implementation = implementation or dot_product_attention_backend(dtype, query.shape[-1])
  length_multiple = length_multiple or (2 if implementation == 'cudnn' else 1)
  q_len, k_len = query.shape[1], key.shape[1]
  q_pad, k_pad = _round_up(q_len, length_multiple), _round_up(k_len, length_multiple)
  compute_dtype = jnp.float32 if float32_logits and implementation == 'xla' else dtype
  query, key, value = (_pad_axis(x.astype(compute_dtype), 1, size) for x, size in
                       ((query, q_pad), (key, k_pad), (value, k_pad)))
  if bias is not None:
    bias = _pad_axis(_pad_axis(bias.astype(compute_dtype), 2, q_pad), 3, k_pad)
    if implementation == 'xla' and bias.shape[0] == 1 < query.shape[0]:  # cuDNN takes [1, h, q, k] as it is
      bias = broadcast_batch(bias, query.shape[0])
  if mask.q_lengths is not None:
    masking = dict(query_seq_lengths=mask.q_lengths, key_value_seq_lengths=mask.kv_lengths, is_causal=mask.causal)
  else:
    masking = dict(mask=_pad_axis(_pad_axis(mask.mask, 2, q_pad, False), 3, k_pad, False))
  out = jax.nn.dot_product_attention(query, key, value, bias, scale=1.0, implementation=implementation, **masking)
  return out[:, :q_len].astype(dtype)


TPU_FLASH_BLOCK = 128  # the Pallas kernel's default block along both lengths


def tpu_flash_attention(query: Array, key: Array, value: Array, bias: Optional[Array], mask: AttentionMask,
                        dtype) -> Array:
  """plain_attention's function through the Pallas TPU flash-attention kernel, which takes a full bias `ab`.

  The kernel wants [batch, heads, length, head_dim], lengths in whole blocks (padded here: padded keys get segment
  0, which no valid query has) and the bias for every row: the relative-position bias is broadcast over the batch.
  """
  from jax.experimental.pallas.ops.tpu import flash_attention as pallas_flash  # TPU-only kernel: import late
  batch, q_len, heads, _ = query.shape
  q_pad, k_pad = _round_up(q_len, TPU_FLASH_BLOCK), _round_up(key.shape[1], TPU_FLASH_BLOCK)
  to_heads_major = lambda x, size: jnp.swapaxes(_pad_axis(x.astype(dtype), 1, size), 1, 2)
  query, key, value = to_heads_major(query, q_pad), to_heads_major(key, k_pad), to_heads_major(value, k_pad)
  if bias is not None:
    bias = jnp.broadcast_to(_pad_axis(_pad_axis(bias.astype(dtype), 2, q_pad), 3, k_pad),
                            (batch, heads, q_pad, k_pad))
  segments = pallas_flash.SegmentIds(q=_pad_axis(mask.q_segments, 1, q_pad), kv=_pad_axis(mask.kv_segments, 1, k_pad))
  out = pallas_flash.flash_attention(query, key, value, bias, segments, causal=mask.causal, sm_scale=1.0)
  return jnp.swapaxes(out, 1, 2)[:, :q_len].astype(dtype)


# ---------------------------------------------------------------------------------------------------------------
# Relative position buckets (T5).
# ---------------------------------------------------------------------------------------------------------------
def relative_position_bucket(relative_position: np.ndarray, bidirectional: bool = True, num_buckets: int = 32,
                             max_distance: int = 128) -> np.ndarray:
  """T5's bucket of each relative position (key position - query position); static numpy.

  Half the buckets are exact small distances, the rest log-spaced up to max_distance; bidirectional splits the
  buckets between keys before and after the query, unidirectional maps all keys after the query to bucket 0.
  Computed with numpy at trace time, so full and step-by-step decoding share one table bit for bit.
  """
  n = -np.asarray(relative_position, dtype=np.int32)
  bucket = np.zeros_like(n)
  if bidirectional:
    num_buckets //= 2
    bucket += (n < 0).astype(np.int32) * num_buckets
    n = np.abs(n)
  else:
    n = np.maximum(n, 0)
  max_exact = num_buckets // 2
  with np.errstate(divide='ignore'):
    scaled = (np.log(n.astype(np.float32) / max_exact + np.finfo(np.float32).eps)
              / np.log(max_distance / max_exact) * (num_buckets - max_exact))
  large = np.minimum(max_exact + scaled.astype(np.int32), num_buckets - 1)
  return bucket + np.where(n < max_exact, n, large)


class RelativePositionBiases(nn.Module):
  """Per-head learned bias for each relative position bucket, added to the attention logits."""
  num_buckets: int
  max_distance: int
  num_heads: int
  dtype: Any = jnp.float32

  def setup(self):
    self.rel_embedding = param_with_axes('rel_embedding', relpos_init, (self.num_heads, self.num_buckets),
                                         jnp.float32, axes=('heads', 'relpos_buckets'))

  def _per_distance(self, q_len: int, k_len: int, bidirectional: bool) -> Array:
    """[heads, q_len + k_len - 1]: the bias of distance d = key - query sits at index d + q_len - 1."""
    buckets = relative_position_bucket(np.arange(1 - q_len, k_len), bidirectional, self.num_buckets,
                                       self.max_distance)
    one_hot = (buckets[None, :] == np.arange(self.num_buckets)[:, None]).astype(np.float32)
    return jnp.dot(self.rel_embedding, one_hot).astype(self.dtype)  # a matmul, so 'heads' may be sharded

  def __call__(self, q_len: int, k_len: int, bidirectional: bool = True) -> Array:
    """[1, heads, q_len, k_len] for queries and keys at positions 0..len-1."""
    per_distance = self._per_distance(q_len, k_len, bidirectional)
    index = np.arange(k_len)[None, :] - np.arange(q_len)[:, None] + q_len - 1
    return jnp.take(per_distance, index, axis=1)[None]

  def step(self, query_index: Array, length: int, bidirectional: bool = False) -> Array:
    """[1, heads, 1, length]: the row of `__call__(length, length)` for one (traced) query position."""
    per_distance = self._per_distance(length, length, bidirectional)
    row = lax.dynamic_slice_in_dim(per_distance, length - 1 - query_index, length, axis=1)
    return row[None, :, None, :]


# ---------------------------------------------------------------------------------------------------------------
# Layers.
# ---------------------------------------------------------------------------------------------------------------
class LayerNorm(nn.Module):
  """T5's layer norm: RMS scaling, no mean subtraction and no bias."""
  epsilon: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = x.astype(jnp.float32)
    scale = param_with_axes('scale', nn.initializers.ones, (x.shape[-1],), jnp.float32, axes=('embed',))
    y = x * lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon)
    return (y * _expand_to(scale, y.ndim)).astype(self.dtype)


def dense_general(x: Array, kernel: Array, features: Tuple[int, ...], contract_dims: int, dtype) -> Array:
  """x's trailing `contract_dims` axes times a 2-D kernel [prod(contracted), prod(features)]."""
  in_shape = x.shape[x.ndim - contract_dims:]
  kernel = kernel.astype(dtype).reshape(in_shape + tuple(features))
  x_axes = tuple(range(x.ndim - contract_dims, x.ndim))
  return lax.dot_general(x.astype(dtype), kernel, ((x_axes, tuple(range(contract_dims))), ((), ())))


class DenseGeneral(nn.Module):
  """Linear map of the trailing `contract_dims` input axes to `features`; 2-D float32 kernel as t5x stores it."""
  features: Tuple[int, ...]
  kernel_axes: Tuple[str, str]
  contract_dims: int = 1
  kernel_init: Callable = dense_kernel_init
  use_bias: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_shape = x.shape[x.ndim - self.contract_dims:]
    kernel = param_with_axes('kernel', self.kernel_init, (math.prod(in_shape), math.prod(self.features)),
                             jnp.float32, axes=self.kernel_axes)
    y = dense_general(x, kernel, self.features, self.contract_dims, self.dtype)
    if self.use_bias:
      bias = param_with_axes('bias', nn.initializers.zeros, (math.prod(self.features),), jnp.float32,
                             axes=self.kernel_axes[-1:])
      y = y + _expand_to(bias.astype(self.dtype).reshape(tuple(self.features)), y.ndim)
    return y


def dropout(x: Array, rate: float, deterministic: bool, broadcast_length: bool = True) -> Array:
  """T5's dropout: one mask per example and feature, shared along the length axis (-2)."""
  return nn.Dropout(rate=rate, broadcast_dims=(-2,) if broadcast_length else ())(x, deterministic=deterministic)


class Embed(nn.Module):
  """The token embedding table shared by D's encoder, D's decoder and G; `attend` gives tied logits."""
  num_embeddings: int
  features: int
  dtype: Any = jnp.float32

  def setup(self):
    self.embedding = param_with_axes('embedding', embedding_init, (self.num_embeddings, self.features),
                                     jnp.float32, axes=('vocab', 'embed'))

  def __call__(self, token_ids: Array) -> Array:
    x = jnp.take(self.embedding, token_ids.astype(jnp.int32), axis=0).astype(self.dtype)
    return constrain(x, ('batch', 'length', 'embed'))

  def attend(self, query: Array) -> Array:
    """[..., features] -> [..., num_embeddings] float32 dot products with every embedding."""
    return jnp.einsum('...d,vd->...v', query.astype(jnp.float32), self.embedding)


class MultiHeadAttention(nn.Module):
  """Multi-head dot-product attention with an additive bias and a mask; `decode=True` keeps a key/value cache.

  As in T5 the logits are not divided by sqrt(head_dim): that factor is folded into the query initializer.
  `impl` (T5Config.attention_impl) picks the implementation; attention-weight dropout (training with
  dropout_rate > 0) and one-position decoding steps always run the plain one (no kernel here takes a dropout of
  the weights; a [1 x length] row has nothing to fuse).
  Cache: 'cached_key' and 'cached_value' [batch, kv_length, heads, head_dim]. The call that creates them (no
  `decode_index`) runs plain attention. Later calls pass `decode_index` and one query position. Self-attention
  writes that position's key and value at the index; cross-attention (cross=True) projects the encoder output
  once, at index 0, and reuses it for every later position instead of projecting it again at each step.
  """
  num_heads: int
  head_dim: int
  dropout_rate: float = 0.0
  float32_logits: bool = False
  cross: bool = False
  impl: str = 'plain'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, bias: Optional[Array], mask: AttentionMask, *,
               deterministic: bool, decode: bool = False, decode_index: Optional[Array] = None) -> Array:
    project = functools.partial(DenseGeneral, features=(self.num_heads, self.head_dim),
                                kernel_axes=('embed', 'joined_kv'), dtype=self.dtype)
    query_init = lambda *args: attention_kernel_init(*args) / np.sqrt(self.head_dim).astype(np.float32)
    qkv_axes = ('batch', 'length', 'heads', 'kv')
    query = constrain(project(kernel_init=query_init, name='query')(inputs_q), qkv_axes)
    if decode and decode_index is not None and self.cross:
      key, value = self._cached_cross_key_value(inputs_kv, decode_index)
    else:
      key = constrain(project(kernel_init=attention_kernel_init, name='key')(inputs_kv), qkv_axes)
      value = constrain(project(kernel_init=attention_kernel_init, name='value')(inputs_kv), qkv_axes)
      if decode:
        key, value = self._cached_self_key_value(key, value, decode_index)

    x = self._attend(query, key, value, bias, mask, deterministic, stepping=decode_index is not None)
    return DenseGeneral(features=(inputs_q.shape[-1],), kernel_axes=('joined_kv', 'embed'), contract_dims=2,
                        kernel_init=attention_kernel_init, dtype=self.dtype, name='out')(x)

  def _attend(self, query: Array, key: Array, value: Array, bias: Optional[Array], mask: AttentionMask,
              deterministic: bool, stepping: bool) -> Array:
    dropout_active = not deterministic and self.dropout_rate > 0.0
    if self.impl == 'plain' or dropout_active or stepping:
      return plain_attention(query, key, value, bias, mask, self.dtype, self.float32_logits,
                             self._weights_dropout if dropout_active else None)
    if self.impl == 'dot_product_attention':
      return fused_dot_product_attention(query, key, value, bias, mask, self.dtype, self.float32_logits)
    if self.impl == 'tpu_flash':
      return tpu_flash_attention(query, key, value, bias, mask, self.dtype)
    raise ValueError(f'unknown attention implementation {self.impl!r}')

  def _weights_dropout(self, weights: Array) -> Array:
    keep = jax.random.bernoulli(self.make_rng('dropout'), 1.0 - self.dropout_rate,
                                weights.shape[:2] + (1,) + weights.shape[3:])  # shared across queries
    return weights * (keep.astype(self.dtype) / jnp.asarray(1.0 - self.dropout_rate, self.dtype))

  def _cache(self, shape: Tuple[int, ...]):
    return (self.variable('cache', 'cached_key', jnp.zeros, shape, self.dtype),
            self.variable('cache', 'cached_value', jnp.zeros, shape, self.dtype))

  def _cached_self_key_value(self, key: Array, value: Array, decode_index: Optional[Array]):
    cached_key, cached_value = self._cache(key.shape)
    if decode_index is None:  # the call that creates the cache
      return key, value
    if key.shape[1] != 1:
      raise ValueError(f'cached decoding takes one position per call, got length {key.shape[1]}')
    cached_key.value = lax.dynamic_update_slice_in_dim(cached_key.value, key.astype(self.dtype), decode_index, 1)
    cached_value.value = lax.dynamic_update_slice_in_dim(cached_value.value, value.astype(self.dtype),
                                                         decode_index, 1)
    return cached_key.value, cached_value.value

  def _cached_cross_key_value(self, inputs_kv: Array, decode_index: Array):
    cached_key, cached_value = self._cache(inputs_kv.shape[:2] + (self.num_heads, self.head_dim))
    params = self.variables['params']  # read directly: Flax modules cannot be called inside lax.cond

    def project():
      return tuple(dense_general(inputs_kv, params[name]['kernel'], (self.num_heads, self.head_dim), 1, self.dtype)
                   for name in ('key', 'value'))

    key, value = lax.cond(decode_index == 0, project, lambda: (cached_key.value, cached_value.value))
    cached_key.value, cached_value.value = key, value
    return key, value


class MlpBlock(nn.Module):
  """T5 feed-forward: ('relu',) is T5.1.0; ('gelu', 'linear') multiplies two projections (T5.1.1 gated GELU)."""
  mlp_dim: int
  activations: Tuple[str, ...] = ('relu',)
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    hidden = []
    for i, name in enumerate(self.activations):
      dense = DenseGeneral(features=(self.mlp_dim,), kernel_axes=('embed', 'mlp'), dtype=self.dtype,
                           name='wi' if len(self.activations) == 1 else f'wi_{i}')
      hidden.append(activation_fn(name)(dense(x)))
    h = functools.reduce(operator.mul, hidden)
    h = constrain(dropout(h, self.dropout_rate, deterministic), ('batch', 'length', 'mlp'))
    return DenseGeneral(features=(x.shape[-1],), kernel_axes=('mlp', 'embed'), dtype=self.dtype, name='wo')(h)


def _attention(cfg: T5Config, name: str, cross: bool = False) -> MultiHeadAttention:
  return MultiHeadAttention(num_heads=cfg.num_heads, head_dim=cfg.head_dim, dropout_rate=cfg.dropout_rate,
                            float32_logits=cfg.float32_attention_logits, cross=cross, impl=cfg.attention_impl,
                            dtype=jnp.dtype(cfg.dtype), name=name)


def _mlp(cfg: T5Config) -> MlpBlock:
  return MlpBlock(mlp_dim=cfg.mlp_dim, activations=cfg.mlp_activations, dropout_rate=cfg.dropout_rate,
                  dtype=jnp.dtype(cfg.dtype), name='mlp')


def _relpos(cfg: T5Config) -> RelativePositionBiases:
  return RelativePositionBiases(num_buckets=cfg.relative_attention_num_buckets,
                                max_distance=cfg.relative_attention_max_distance, num_heads=cfg.num_heads,
                                dtype=jnp.dtype(cfg.dtype), name='relpos_bias')


def _residual(x: Array, y: Array, cfg: T5Config, deterministic: bool) -> Array:
  return constrain(x + dropout(y, cfg.dropout_rate, deterministic), ('batch', 'length', 'embed'))


class EncoderLayer(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x: Array, relpos_bias: Array, mask: AttentionMask, deterministic: bool) -> Array:
    cfg, dtype = self.config, jnp.dtype(self.config.dtype)
    y = LayerNorm(dtype=dtype, name='pre_attention_layer_norm')(x)
    y = _attention(cfg, 'attention')(y, y, relpos_bias, mask, deterministic=deterministic)
    x = _residual(x, y, cfg, deterministic)
    y = LayerNorm(dtype=dtype, name='pre_mlp_layer_norm')(x)
    return _residual(x, _mlp(cfg)(y, deterministic), cfg, deterministic)


class DecoderLayer(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x: Array, encoded: Array, relpos_bias: Array, self_mask: AttentionMask,
               cross_mask: AttentionMask, deterministic: bool, decode: bool, decode_index: Optional[Array]) -> Array:
    cfg, dtype = self.config, jnp.dtype(self.config.dtype)
    y = LayerNorm(dtype=dtype, name='pre_self_attention_layer_norm')(x)
    y = _attention(cfg, 'self_attention')(y, y, relpos_bias, self_mask, deterministic=deterministic, decode=decode,
                                          decode_index=decode_index)
    x = _residual(x, y, cfg, deterministic)
    y = LayerNorm(dtype=dtype, name='pre_cross_attention_layer_norm')(x)
    y = _attention(cfg, 'encoder_decoder_attention', cross=True)(y, encoded, None, cross_mask,
                                                                  deterministic=deterministic, decode=decode,
                                                                  decode_index=decode_index)
    x = _residual(x, y, cfg, deterministic)
    y = LayerNorm(dtype=dtype, name='pre_mlp_layer_norm')(x)
    return _residual(x, _mlp(cfg)(y, deterministic), cfg, deterministic)


# What a rematerialized layer keeps for the backward pass (T5Config.remat_policy); None: only its inputs.
REMAT_SAVEABLE = {'minimal': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims, 'full': None}


def _layer_class(layer: type, cfg: T5Config, static_argnums: Tuple[int, ...]) -> type:
  """The layer module, wrapped in nn.remat unless cfg.remat_policy is 'none'; parameter names do not change."""
  if cfg.remat_policy == 'none':
    return layer
  return nn.remat(layer, policy=REMAT_SAVEABLE[cfg.remat_policy], static_argnums=static_argnums)


class Encoder(nn.Module):
  """Bidirectional stack (D's encoder, and G's body): tokens -> normalized hidden states."""
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, tokens: Array, mask: AttentionMask, deterministic: bool) -> Array:
    cfg = self.config
    length = tokens.shape[-1]
    relpos_bias = _relpos(cfg)(length, length, bidirectional=True)
    x = dropout(self.shared_embedding(tokens), cfg.dropout_rate, deterministic)
    layer = _layer_class(EncoderLayer, cfg, static_argnums=(4,))  # `deterministic` (self is 0)
    for i in range(cfg.num_encoder_layers):
      x = layer(cfg, name=f'layers_{i}')(x, relpos_bias, mask, deterministic)
    x = LayerNorm(dtype=jnp.dtype(cfg.dtype), name='encoder_norm')(x)
    return dropout(x, cfg.dropout_rate, deterministic, broadcast_length=False)


class Decoder(nn.Module):
  """Causal stack with cross-attention: decoder input tokens -> normalized hidden states.

  decode=True: the first call (full-length input, no cache yet) creates the cache with `cache_index` 0; each
  later call takes one token, attends to the cached positions <= cache_index and advances it.
  """
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, encoded: Array, decoder_input_tokens: Array, self_mask: AttentionMask,
               cross_mask: AttentionMask, deterministic: bool, decode: bool = False,
               max_decode_length: Optional[int] = None) -> Array:
    cfg = self.config
    relpos = _relpos(cfg)
    stepping = decode and self.has_variable('cache', 'cache_index')
    decode_index = None
    if stepping:
      length = self._cache_length(max_decode_length)
      index = self.variable('cache', 'cache_index', lambda: jnp.zeros((), jnp.int32))
      decode_index = index.value
      self_mask = AttentionMask((jnp.arange(length) <= decode_index)[None, None, None, :])
      relpos_bias = relpos.step(decode_index, length, bidirectional=False)
      index.value = decode_index + 1
    else:
      if decode:
        self.variable('cache', 'cache_index', lambda: jnp.zeros((), jnp.int32))
      length = decoder_input_tokens.shape[-1]
      relpos_bias = relpos(length, length, bidirectional=False)

    y = dropout(self.shared_embedding(decoder_input_tokens), cfg.dropout_rate, deterministic)
    # Decoding computes no gradients and writes the cache: no remat there.
    layer = DecoderLayer if decode else _layer_class(DecoderLayer, cfg, static_argnums=(6, 7))
    for i in range(cfg.num_decoder_layers):
      y = layer(cfg, name=f'layers_{i}')(y, encoded, relpos_bias, self_mask, cross_mask, deterministic, decode,
                                         decode_index)
    y = LayerNorm(dtype=jnp.dtype(cfg.dtype), name='decoder_norm')(y)
    return dropout(y, cfg.dropout_rate, deterministic)

  def _cache_length(self, max_decode_length: Optional[int]) -> int:
    cached = self.variables['cache']['layers_0']['self_attention']['cached_key'].shape[1]
    if max_decode_length is not None and max_decode_length != cached:
      raise ValueError(f'max_decode_length={max_decode_length} but the cache holds {cached} positions')
    return cached


# ---------------------------------------------------------------------------------------------------------------
# Stage-1 heads.
# ---------------------------------------------------------------------------------------------------------------
def generator_stack_config(config: T5Config, generator: GeneratorConfig) -> T5Config:
  """G's encoder: D's width, activations, dropout and relative attention; G's depth, MLP width and heads."""
  return dataclasses.replace(config, num_encoder_layers=generator.num_layers, mlp_dim=generator.mlp_dim,
                             num_heads=generator.num_heads or config.num_heads,
                             head_dim=generator.head_dim or config.head_dim)


class Generator(nn.Module):
  """G: encoder-only stack on the shared embedder, then W^G (or ELECTRA's tied output plus a bias)."""
  config: T5Config
  generator: GeneratorConfig
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, tokens: Array, mask: AttentionMask, deterministic: bool,
               predict_positions: Optional[Array] = None) -> Array:
    cfg = generator_stack_config(self.config, self.generator)
    h = Encoder(cfg, self.shared_embedding, name='encoder')(tokens, mask, deterministic)
    if predict_positions is not None:  # project only where a token is predicted: [batch, k, emb]
      h = jnp.take_along_axis(h, predict_positions[..., None], axis=1)
    if self.generator.tied_output:
      bias = param_with_axes('logits_bias', nn.initializers.zeros, (cfg.vocab_size,), jnp.float32, axes=('vocab',))
      logits = self.shared_embedding.attend(h) / np.sqrt(cfg.emb_dim) + _expand_to(bias, h.ndim)
    else:
      logits = DenseGeneral(features=(cfg.vocab_size,), kernel_axes=('embed', 'vocab'), dtype=jnp.float32,
                            name='logits_dense')(h)
    return constrain(logits, ('batch', 'length', 'vocab'))


class RTDHead(nn.Module):
  """f in Eq. (5): dense(mlp_dim, activation) -> dense(1); one logit per position.

  spactor.objectives.rtd_loss reads it as the log-odds that the token was replaced (ELECTRA's sign).
  """
  config: RTDHeadConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, encoded: Array) -> Array:
    h = DenseGeneral(features=(self.config.mlp_dim,), kernel_axes=('embed', 'mlp'), use_bias=True,
                     dtype=self.dtype, name='hidden')(encoded)
    h = constrain(activation_fn(self.config.activation)(h), ('batch', 'length', 'mlp'))
    # A vector, not a [mlp, 1] kernel: no logical axis name exists for a size-1 output dimension. No output bias
    # either (a scalar has no axis to name); the hidden layer's bias can carry the class prior.
    w = param_with_axes('output_kernel', nn.initializers.normal(stddev=self.config.mlp_dim ** -0.5),
                        (self.config.mlp_dim,), jnp.float32, axes=('mlp',))
    return jnp.einsum('blm,m->bl', h.astype(jnp.float32), w)


# ---------------------------------------------------------------------------------------------------------------
# The model.
# ---------------------------------------------------------------------------------------------------------------
class SpacTor(nn.Module):
  """T5 discriminator D plus, in stage 1, generator G and RTD head; methods mirror t5x's network.Transformer.

  Positions (encoder_positions, decoder_positions, positions) are accepted for t5x's interface and ignored: T5's
  relative attention needs only the order within a row, and packing masks keep segments apart.
  """
  config: T5Config
  generator: Optional[GeneratorConfig] = None
  rtd_head: Optional[RTDHeadConfig] = None

  def setup(self):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    self.token_embedder = Embed(num_embeddings=cfg.vocab_size, features=cfg.emb_dim, dtype=dtype)
    self.encoder = Encoder(cfg, self.token_embedder)
    self.decoder = Decoder(cfg, self.token_embedder)
    if not cfg.logits_via_embedding:
      self.logits_dense = DenseGeneral(features=(cfg.vocab_size,), kernel_axes=('embed', 'vocab'),
                                       dtype=jnp.float32)
    if self.generator is not None:
      self.generator_net = Generator(cfg, self.generator, self.token_embedder, name='generator')
    if self.rtd_head is not None:
      self.rtd_net = RTDHead(self.rtd_head, dtype=dtype, name='rtd_head')

  def encode(self, encoder_input_tokens, encoder_segment_ids=None, encoder_positions=None, enable_dropout=True):
    """[batch, length] tokens -> [batch, length, emb_dim] encoder output."""
    del encoder_positions
    return self.encoder(encoder_input_tokens, encoder_attention_mask(encoder_input_tokens, encoder_segment_ids),
                        deterministic=not enable_dropout)

  def decode(self, encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
             encoder_segment_ids=None, decoder_segment_ids=None, decoder_positions=None, enable_dropout=True,
             decode=False, max_decode_length=None):
    """Decoder logits [batch, length, vocab] (float32); decode=True uses the 'cache' collection."""
    del decoder_positions
    if decode:  # every position is valid: the cache is filled one position at a time
      if encoder_segment_ids is not None:
        raise ValueError('packed inputs (encoder_segment_ids) cannot be used with decode=True')
      self_mask = decoder_attention_mask(jnp.ones_like(decoder_input_tokens))
      enc_dec_mask = cross_attention_mask(jnp.ones_like(decoder_target_tokens), encoder_input_tokens)
    else:
      self_mask = decoder_attention_mask(decoder_target_tokens, decoder_segment_ids)
      enc_dec_mask = cross_attention_mask(decoder_target_tokens, encoder_input_tokens, decoder_segment_ids,
                                          encoder_segment_ids)
    y = self.decoder(encoded, decoder_input_tokens, self_mask, enc_dec_mask, deterministic=not enable_dropout,
                     decode=decode, max_decode_length=max_decode_length)
    return self._output_logits(y)

  def _output_logits(self, y: Array) -> Array:
    if self.config.logits_via_embedding:
      logits = self.token_embedder.attend(y) / np.sqrt(y.shape[-1])  # T5.1.0: keeps logits O(1) at init
    else:
      logits = self.logits_dense(y)
    return constrain(logits, ('batch', 'length', 'vocab'))

  def __call__(self, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens, encoder_segment_ids=None,
               decoder_segment_ids=None, encoder_positions=None, decoder_positions=None, *,
               enable_dropout: bool = True, decode: bool = False, max_decode_length: Optional[int] = None):
    """D's decoder logits for teacher-forced targets, as t5x's Transformer.__call__."""
    encoded = self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions, enable_dropout)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
                       encoder_segment_ids=encoder_segment_ids, decoder_segment_ids=decoder_segment_ids,
                       decoder_positions=decoder_positions, enable_dropout=enable_dropout, decode=decode,
                       max_decode_length=max_decode_length)

  def generator_logits(self, tokens, segment_ids=None, positions=None, enable_dropout=True,
                       predict_positions=None):
    """G's float32 logits [batch, length, vocab] for the MLM-masked encoder input.

    With predict_positions [batch, k], only those positions are projected to the vocabulary ([batch, k, vocab]):
    the [M] positions are ~15% of the input, and the projection is most of G's cost.
    """
    del positions
    if self.generator is None:
      raise ValueError('this SpacTor has no generator (generator=None: a plain T5 / stage 2)')
    return self.generator_net(tokens, encoder_attention_mask(tokens, segment_ids), deterministic=not enable_dropout,
                              predict_positions=predict_positions)

  def rtd_logits(self, encoded):
    """RTD float32 logits [batch, length] from D's encoder output; sigmoid gives p(token was replaced)."""
    if self.rtd_head is None:
      raise ValueError('this SpacTor has no RTD head (rtd_head=None: a plain T5 / stage 2)')
    return self.rtd_net(encoded)

  def init_all(self, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens, encoder_segment_ids=None,
               decoder_segment_ids=None, encoder_positions=None, decoder_positions=None, enable_dropout=False):
    """Runs every submodule of this stage once; `model.init(rng, ..., method=SpacTor.init_all)` creates all params.

    Returns a dict with 'logits' and, in stage 1, 'generator_logits' and 'rtd_logits'.
    """
    encoded = self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions, enable_dropout)
    outputs = {'logits': self.decode(encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
                                     encoder_segment_ids, decoder_segment_ids, decoder_positions, enable_dropout)}
    if self.generator is not None:
      outputs['generator_logits'] = self.generator_logits(encoder_input_tokens, encoder_segment_ids,
                                                          encoder_positions, enable_dropout)
    if self.rtd_head is not None:
      outputs['rtd_logits'] = self.rtd_logits(encoded)
    return outputs


def param_count(params) -> int:
  """Number of scalars in a (possibly abstract) parameter tree."""
  return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params))
