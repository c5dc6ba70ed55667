"""Truncated sampling from logits: temperature, top-k and nucleus (top-p, Holtzman et al. 2020). Pure jnp.

`truncate(logits, top_k, top_p)` sets the logits of the removed tail to -inf; `sample` draws from what is left.
Nucleus: keep the smallest set of most probable tokens whose probability sums to at least p (the most probable
token is always kept); a token tied with the last kept one is kept too. Sampling inverts the CDF.
"""
import jax
import jax.numpy as jnp

NEG_INF = -1e10  # large finite negative: exp() underflows to 0 while max/argmax stay well defined


def top_k_mask(logits, k):
  """bool [..., V]: True for the k largest logits (and anything tied with the k-th)."""
  kth = jax.lax.top_k(logits, k)[0][..., -1:]
  return logits >= kth


def _ordered_keys(x):
  """uint32 keys that sort like the float32 values of x (IEEE bits, sign flipped / negatives inverted)."""
  bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
  return jnp.where((bits >> 31) == 1, ~bits, bits | jnp.uint32(0x80000000))


def top_p_mask(logits, p):
  """bool [..., V]: True inside the nucleus of mass p of softmax(logits).

  The nucleus is {logit >= c} for the largest logit value c whose tokens {logit >= c} hold mass >= p: the
  smallest set of most probable tokens reaching p (ties with the last one kept). c is found by bisection over the
  32-bit ordered keys of the logits, exact after 32 rounds of O(V) sums; on a CPU this is >10x faster than the
  sort (a [64, 4224] sort takes ~90 ms there).
  """
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  keys = _ordered_keys(logits)
  lo = jnp.min(keys, axis=-1, keepdims=True)  # mass(keys >= lo) = 1 >= p
  hi = jnp.max(keys, axis=-1, keepdims=True)

  def halve(_, bounds):  # invariant: mass(keys >= lo) >= p; the answer is in [lo, hi]
    lo, hi = bounds
    mid = lo + (hi - lo + 1) // 2
    enough = jnp.sum(jnp.where(keys >= mid, probs, 0.0), axis=-1, keepdims=True) >= p
    return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid - 1)

  lo, _ = jax.lax.fori_loop(0, 32, halve, (lo, hi))
  return keys >= lo


def _first_argmax(x):
  """argmax over the last axis as two plain reductions (XLA:CPU's fused argmax reduce is slower)."""
  top = jnp.max(x, axis=-1, keepdims=True)
  return jnp.min(jnp.where(x == top, jnp.arange(x.shape[-1]), x.shape[-1]), axis=-1)


def truncate(logits, top_k=0, top_p=1.0):
  """Logits with the tail removed (-inf-like) by top-k (0: off) and then top-p (1.0: off)."""
  logits = logits.astype(jnp.float32)
  if top_k:
    logits = jnp.where(top_k_mask(logits, top_k), logits, NEG_INF)
  if top_p < 1.0:
    logits = jnp.where(top_p_mask(logits, top_p), logits, NEG_INF)
  return logits


def sample(rng, logits, temperature=1.0, top_k=0, top_p=1.0):
  """Token ids [...] drawn from softmax(logits / temperature) restricted to the top-k / top-p set.

  temperature 0 is greedy decoding. Truncation is applied to the tempered distribution, as in Holtzman et al.
  """
  if temperature == 0.0:
    return _first_argmax(logits)
  # Inverse CDF: one uniform per row (Gumbel-max would need V of them; the RNG dominates on a CPU).
  probs = jax.nn.softmax(truncate(logits / temperature, top_k, top_p), axis=-1)
  cdf = jax.lax.associative_scan(jnp.add, probs, axis=-1)  # a cumsum; faster than jnp.cumsum on CPU
  u = jax.random.uniform(rng, logits.shape[:-1] + (1,)) * cdf[..., -1:]
  return jnp.minimum(jnp.sum(cdf <= u, axis=-1), logits.shape[-1] - 1)
