"""Curriculum SSR (Zhou et al., Section 3.2): k difficulty groups, trained from the easiest to the hardest.

Modes (Table 6 of the paper):
  loss_length  (default) the generator's summed per-token loss of the imperfect spans: perplexity and length;
  loss         the mean per-token loss (perplexity alone);
  length       the number of imperfect span tokens;
  anti         summed loss, hardest group first;
  none         no curriculum: one group, shuffled.

Groups split the examples sorted by (score, id) into k equal parts, so every example is in exactly one group and
each group's scores are <= the next group's. The boundaries are k-1 (score, id) pairs, small enough to cache as
JSON next to the data; a group is read by filtering the shards with them, so no copy of the data is made.
"""
import json
import os

import numpy as np
import tensorflow as tf

from ssr import records

MODES = ("loss_length", "loss", "length", "anti", "none")


def _check_mode(mode):
  if mode not in MODES:
    raise ValueError(f"curriculum mode {mode!r} is not one of {MODES}")


def difficulty(generator_loss, imperfect_length, mode):
  """Difficulty score (float32) of examples; works on tf tensors (used for both the boundaries and the filter)."""
  _check_mode(mode)
  loss = tf.cast(generator_loss, tf.float32)
  length = tf.cast(imperfect_length, tf.float32)
  if mode == "loss":
    return loss / tf.maximum(length, 1.0)
  if mode == "length":
    return length
  return loss  # loss_length, anti; for none the score only has to exist


def num_groups(mode, k):
  return 1 if mode == "none" else k


def group_order(mode, k):
  """The group indices in training order."""
  groups = list(range(num_groups(mode, k)))
  return groups[::-1] if mode == "anti" else groups


def boundaries(scores, ids, k):
  """The last (score, id) of each of the first k-1 groups of the examples sorted by (score, id)."""
  scores, ids = np.asarray(scores, np.float32), np.asarray(ids, np.int64)
  if scores.shape != ids.shape or scores.ndim != 1:
    raise ValueError(f"scores {scores.shape} and ids {ids.shape} must be vectors of one length")
  if len(np.unique(ids)) != len(ids):
    raise ValueError("example ids must be unique")
  if k < 1 or k > len(ids):
    raise ValueError(f"cannot split {len(ids)} examples into {k} groups")
  order = np.lexsort((ids, scores))
  ends = [(g + 1) * len(ids) // k - 1 for g in range(k - 1)]
  return [(float(scores[order[e]]), int(ids[order[e]])) for e in ends]


def assign_groups(scores, ids, bounds):
  """Group of each example: the number of boundaries it sorts after. tf or numpy inputs, returns a tf tensor."""
  scores = tf.cast(scores, tf.float32)
  ids = tf.cast(ids, tf.int64)
  group = tf.zeros_like(ids, tf.int32)
  for bound_score, bound_id in bounds:
    after = (scores > bound_score) | ((scores == bound_score) & (ids > bound_id))
    group += tf.cast(after, tf.int32)
  return group


def _scalar_table(shards):
  ds = tf.data.TFRecordDataset(shards).batch(4096).map(lambda s: records.parse(s, with_sequences=False))
  columns = {name: [] for name in records.SCALARS}
  for batch in ds.as_numpy_iterator():
    for name in columns:
      columns[name].append(batch[name])
  return {name: np.concatenate(values) if values else np.zeros([0]) for name, values in columns.items()}


def load_boundaries(data_dir, split, mode, k):
  """Group boundaries of a split, computed once from the shards' scalars and cached as JSON."""
  _check_mode(mode)
  shards = records.list_shards(data_dir, split)
  if not shards:
    raise FileNotFoundError(f"no generated {split!r} shards in {data_dir}: run `python -m ssr.generate` first")
  groups = num_groups(mode, k)
  path = os.path.join(data_dir, f"curriculum-{split}-{mode}-k{groups}.json")
  names = [os.path.basename(s) for s in shards]
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as f:
      cached = json.load(f)
    if cached["shards"] == names:
      return [tuple(b) for b in cached["boundaries"]]
  table = _scalar_table(shards)
  scores = difficulty(table["generator_loss"], table["imperfect_length"], mode).numpy()
  bounds = boundaries(scores, table["id"], groups)
  sizes = np.bincount(assign_groups(scores, table["id"], bounds).numpy(), minlength=groups)
  records.write_json_atomic(path, json.dumps(
      {"mode": mode, "k": groups, "shards": names, "boundaries": bounds, "group_sizes": sizes.tolist()}))
  return bounds


def curriculum_dataset(data_dir, split, mode="loss_length", k=5, seed=0, shuffle_buffer=10_000, group_epochs=1):
  """The generated examples in curriculum order: each group shuffled, groups from easy to hard (per `mode`).

  Each group is repeated `group_epochs` times before the next one starts; choose it so that one pass of the
  curriculum lasts the whole training run (the paper goes from the easiest to the hardest group once).
  Yields `inputs`, `targets` (int32, no EOS) and the scalar features of ssr.records.
  """
  bounds = load_boundaries(data_dir, split, mode, k)
  shards = records.list_shards(data_dir, split)
  parsed = tf.data.TFRecordDataset(shards).map(records.parse, num_parallel_calls=tf.data.AUTOTUNE)

  def group_dataset(g):
    in_group = lambda ex: tf.equal(assign_groups(
        difficulty(ex["generator_loss"], ex["imperfect_length"], mode), ex["id"], bounds), g)
    ds = parsed.filter(in_group)
    if shuffle_buffer:
      ds = ds.shuffle(shuffle_buffer, seed=seed + g, reshuffle_each_iteration=True)
    return ds.repeat(group_epochs)

  order = group_order(mode, k)
  ds = group_dataset(order[0])
  for g in order[1:]:
    ds = ds.concatenate(group_dataset(g))
  return ds
