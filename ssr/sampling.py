"""Truncated sampling from logits: temperature, top-k and nucleus (top-p, Holtzman et al. 2020). Pure jnp.

`truncate(logits, top_k, top_p)` sets the logits of the removed tail to -inf; `sample` draws from what is left.
Nucleus: keep the smallest set of most probable tokens whose probability sums to at least p (the most probable
token is always kept); a token tied with the last kept one is kept too.
"""
import jax
import jax.numpy as jnp

NEG_INF = -1e10  # large finite negative: exp() underflows to 0 while max/argmax stay well defined


def top_k_mask(logits, k):
  """bool [..., V]: True for the k largest logits (and anything tied with the k-th)."""
  kth = jax.lax.top_k(logits, k)[0][..., -1:]
  return logits >= kth


def top_p_mask(logits, p):
  """bool [..., V]: True inside the nucleus of mass p of softmax(logits)."""
  sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
  sorted_probs = jax.nn.softmax(sorted_logits, axis=-1)
  mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
  # A sorted token is in the nucleus if the tokens before it hold less than p; the first always is.
  in_nucleus = (mass_before < p).at[..., 0].set(True)
  cutoff = jnp.min(jnp.where(in_nucleus, sorted_logits, jnp.inf), axis=-1, keepdims=True)
  return logits >= cutoff


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
    return jnp.argmax(logits, axis=-1)
  return jax.random.categorical(rng, truncate(logits / temperature, top_k, top_p), axis=-1)
