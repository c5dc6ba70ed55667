"""Curriculum SSR (Zhou et al., Section 3.2): k difficulty groups, trained from the easiest to the hardest.

Modes (Table 6 of the paper):
  loss_length  (default) the generator's summed per-token loss of the imperfect spans: perplexity and length;
  loss         the mean per-token loss (perplexity alone): the summed loss over the number of tokens it sums;
  length       the number of imperfect span tokens;
  anti         summed loss, hardest group first;
  none         no curriculum: one group, shuffled.

Groups split the examples sorted by (score, id) into k equal parts, so every example is in exactly one group and
each group's scores are <= the next group's. The boundaries are k-1 (score, id) pairs, small enough to cache as
JSON next to the data; a group is read by filtering the shards with them, so no copy of the data is made.

The schedule (`plan`, `slots`): a run that reads E examples (steps x batch) goes through the groups once, easy to
hard. Each group gets a share of the E positions proportional to its size (its quota); around each boundary
between neighbouring groups a window of 2h positions switches gradually: the share of the next group rises
linearly from 0 to 1 across the window, and the quotas stay exact. A group whose quota exceeds its size is repeated
in place (the data cannot fill the run without repeating: warned, or refused); a larger group is subsampled.
"""
import dataclasses
import json
import logging
import os

import numpy as np
import tensorflow as tf

from ssr import records

MODES = ("loss_length", "loss", "length", "anti", "none")
ON_REPEAT = ("warn", "stop")
DEFAULT_SWITCH = 0.5

log = logging.getLogger("ssr.curriculum")


def _check_mode(mode):
  if mode not in MODES:
    raise ValueError(f"curriculum mode {mode!r} is not one of {MODES}")


def difficulty(columns, mode):
  """Difficulty score (float32) of examples from their scalar features (ssr.records); tf or numpy values.

  The per-token loss divides the summed loss by the tokens it sums (`sampled_tokens`: the fill tokens and the
  structural tokens the generator chose), so numerator and denominator count the same tokens.
  """
  _check_mode(mode)
  loss = tf.cast(columns["generator_loss"], tf.float32)
  if mode == "loss":
    return loss / tf.maximum(tf.cast(columns["sampled_tokens"], tf.float32), 1.0)
  if mode == "length":
    return tf.cast(columns["imperfect_length"], tf.float32)
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
  return load_groups(data_dir, split, mode, k)[0]


def load_groups(data_dir, split, mode, k):
  """(boundaries, group sizes) of a split, computed once from the shards' scalars and cached as JSON."""
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
      return [tuple(b) for b in cached["boundaries"]], list(cached["group_sizes"])
  table = _scalar_table(shards)
  if mode == "loss" and np.any(table["sampled_tokens"] < 0):
    raise ValueError(f"{data_dir} was generated before ssr.generate recorded `sampled_tokens`, which the per-token "
                     f"loss curriculum divides by; generate the data again (another --out_dir) for CURRICULUM='loss'")
  scores = difficulty(table, mode).numpy()
  bounds = boundaries(scores, table["id"], groups)
  sizes = np.bincount(assign_groups(scores, table["id"], bounds).numpy(), minlength=groups)
  records.write_json_atomic(path, json.dumps(
      {"mode": mode, "k": groups, "shards": names, "boundaries": bounds, "group_sizes": sizes.tolist()}))
  return bounds, sizes.tolist()


# --- the schedule -----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Plan:
  """Where each group (in training order) sits in a run of `sum(quotas)` examples."""
  sizes: tuple  # examples in each group, training order
  quotas: tuple  # examples the run reads from each group
  half_widths: tuple  # h of the switch window around each of the len(sizes) - 1 boundaries

  @property
  def examples(self):
    return sum(self.quotas)

  @property
  def repeats(self):
    """How many times the run reads the data: > 1 means examples are repeated (each group in place)."""
    return self.examples / max(sum(self.sizes), 1)


def proportional_quotas(sizes, examples):
  """Splits `examples` over the groups in proportion to their sizes (largest remainder, ties to the earlier)."""
  sizes = np.asarray(sizes, np.int64)
  if examples < 0 or sizes.sum() <= 0 or np.any(sizes < 0):
    raise ValueError(f"cannot share {examples} examples over groups of sizes {sizes.tolist()}")
  exact = sizes * examples
  quotas = exact // sizes.sum()
  remainder = exact - quotas * sizes.sum()
  extra = examples - int(quotas.sum())
  for g in sorted(range(len(sizes)), key=lambda g: -remainder[g])[:extra]:
    quotas[g] += 1
  return [int(q) for q in quotas]


def plan(sizes, examples=None, switch=DEFAULT_SWITCH) -> Plan:
  """The schedule of a run that reads `examples` (None: every example once) from groups of `sizes` (in order).

  `switch` in [0, 1] is the width of each switch window as a fraction of the smaller of the two neighbouring
  quotas (0: a hard switch; 1: the whole of both shares, so a group is never read alone).
  """
  if not 0.0 <= switch <= 1.0:
    raise ValueError(f"the curriculum switch must be in [0, 1], got {switch}")
  quotas = proportional_quotas(sizes, sum(sizes) if examples is None else examples)
  half = [int(switch * min(a, b)) // 2 for a, b in zip(quotas[:-1], quotas[1:])]
  return Plan(tuple(int(s) for s in sizes), tuple(quotas), tuple(half))


def slots(positions, the_plan: Plan):
  """The group (index in training order) that each run position reads from: int64 tf tensor.

  Outside the switch windows position i reads from the group whose quota range holds it. In the window
  [b - h, b + h) around boundary b, relative position j reads from the next group with weight (j + 1/2) / 2h,
  rounded by error diffusion: it does iff the rounded cumulative weight round((j + 1)^2 / 4h) rises at j. The
  next group's share grows linearly across the window and totals exactly h, as with a hard switch, so every quota
  is kept.
  """
  positions = tf.cast(positions, tf.int64)
  slot = tf.zeros_like(positions)
  for bound, h in zip(np.cumsum(the_plan.quotas)[:-1].tolist(), the_plan.half_widths):
    after = positions >= bound
    if h > 0:
      j = positions - (bound - h)
      ramp = ((j + 1) ** 2 + 2 * h) // (4 * h) > (j ** 2 + 2 * h) // (4 * h)
      after = tf.where((j >= 0) & (j < 2 * h), ramp, after)
    slot += tf.cast(after, tf.int64)
  return slot


def check_repeats(the_plan: Plan, split, on_repeat="warn"):
  """Warns (or stops) when the data cannot fill the run without repeating examples."""
  if on_repeat not in ON_REPEAT:
    raise ValueError(f"on_repeat must be one of {ON_REPEAT}, got {on_repeat!r}")
  if the_plan.examples <= sum(the_plan.sizes):
    return
  message = (f"the run reads {the_plan.examples} SSR examples but the {split!r} data holds {sum(the_plan.sizes)}: "
             f"each curriculum group is repeated about {the_plan.repeats:.2f} times in place (the easy-to-hard "
             f"order still runs once). Generate more data (python -m ssr.generate --max_examples=...) to avoid it")
  if on_repeat == "stop":
    raise ValueError(message + ", or set CURRICULUM_ON_REPEAT='warn' to accept it.")
  log.warning("%s.", message)


def run_plan(data_dir, split, mode="loss_length", k=5, examples=None, switch=DEFAULT_SWITCH, on_repeat="warn"):
  """The schedule of a split's curriculum for a run of `examples`; checks the data can fill it."""
  _, sizes = load_groups(data_dir, split, mode, k)
  the_plan = plan([sizes[g] for g in group_order(mode, k)], examples, switch)
  check_repeats(the_plan, split, on_repeat)
  return the_plan


def curriculum_dataset(data_dir, split, mode="loss_length", k=5, seed=0, shuffle_buffer=10_000, examples=None,
                       switch=DEFAULT_SWITCH, on_repeat="warn"):
  """The generated examples in curriculum order, `examples` of them (None: each example once), easy to hard once.

  Each group is shuffled and read for its quota (see `plan`), with gradual switches between neighbours.
  Yields `inputs`, `targets` (int32, no EOS) and the scalar features of ssr.records.
  """
  bounds, _ = load_groups(data_dir, split, mode, k)
  the_plan = run_plan(data_dir, split, mode, k, examples, switch, on_repeat)
  shards = records.list_shards(data_dir, split)
  parsed = tf.data.TFRecordDataset(shards).map(records.parse, num_parallel_calls=tf.data.AUTOTUNE)

  def group_dataset(g, size, quota):
    in_group = lambda ex: tf.equal(assign_groups(difficulty(ex, mode), ex["id"], bounds), g)
    ds = parsed.filter(in_group)
    if shuffle_buffer:
      ds = ds.shuffle(shuffle_buffer, seed=seed + g, reshuffle_each_iteration=True)
    return (ds.repeat() if quota > size else ds).take(quota)

  groups = [group_dataset(g, size, quota)
            for g, size, quota in zip(group_order(mode, k), the_plan.sizes, the_plan.quotas)]
  if len(groups) == 1:
    return groups[0]
  choice = (tf.data.Dataset.range(the_plan.examples).batch(65_536)
            .map(lambda p: slots(p, the_plan)).unbatch())
  return tf.data.Dataset.choose_from_datasets(groups, choice, stop_on_empty_dataset=True)
