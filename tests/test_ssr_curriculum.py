"""Curriculum groups: ordered, equal, each example exactly once; the dataset follows the curriculum."""
import json
import os

import numpy as np
import pytest

from ssr import curriculum, records


def _examples(n, seed=0):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(0, 60, n)
  # Ties on purpose: losses rounded to quarters, so the (score, id) order decides.
  losses = np.round(lengths * rng.uniform(0.5, 3.0, n) * 4) / 4
  return [{"inputs": np.arange(3) + i, "targets": np.array([i]), "id": i, "num_spans": 3, "truth_length": 5,
           "imperfect_length": lengths[i], "generator_loss": losses[i], "sampled_tokens": lengths[i] + 2}
          for i in range(n)]


def _columns(out):
  return {k: np.array([o[k] for o in out]) for k in ("generator_loss", "imperfect_length", "sampled_tokens")}


def _write(tmp_path, examples, per_shard=40, split="train"):
  for s in range(0, len(examples), per_shard):
    records.write_shard(records.shard_path(str(tmp_path), split, s // per_shard),
                        [records.encode(e) for e in examples[s:s + per_shard]])


def test_boundaries_split_sorted_examples_evenly():
  scores = np.array([3.0, 1.0, 2.0, 2.0, 5.0, 0.5, 2.0, 4.0, 1.0, 9.0], np.float32)
  ids = np.arange(10)
  bounds = curriculum.boundaries(scores, ids, 5)
  groups = curriculum.assign_groups(scores, ids, bounds).numpy()
  # Sorted by (score, id): 5, 1, 8, 2, 3, 6, 0, 7, 4, 9 -> two per group.
  np.testing.assert_array_equal(groups, [3, 0, 1, 2, 4, 0, 2, 3, 1, 4])
  assert bounds == [(1.0, 1), (2.0, 2), (2.0, 6), (4.0, 7)]


@pytest.mark.parametrize("k", [1, 3, 5, 7])
def test_groups_ordered_and_cover_every_example_once(k):
  ex = _examples(103)
  scores = np.array([e["generator_loss"] for e in ex], np.float32)
  ids = np.arange(103)
  groups = curriculum.assign_groups(scores, ids, curriculum.boundaries(scores, ids, k)).numpy()
  sizes = np.bincount(groups, minlength=k)
  assert len(sizes) == k and sizes.sum() == 103 and sizes.max() - sizes.min() <= 1
  for g in range(k - 1):
    assert scores[groups == g].max() <= scores[groups == g + 1].min()


def test_modes_scores():
  # Summed loss over sampled tokens (fills + chosen structural tokens): 6 over 3 fills + 1 sentinel + EOS = 5.
  columns = {"generator_loss": np.array([6.0, 2.0, 1.5]), "imperfect_length": np.array([3, 1, 0]),
             "sampled_tokens": np.array([5, 2, 3])}
  np.testing.assert_allclose(curriculum.difficulty(columns, "loss_length"), [6, 2, 1.5])
  np.testing.assert_allclose(curriculum.difficulty(columns, "loss"), [1.2, 1.0, 0.5])  # an empty fill: not 1.5
  np.testing.assert_allclose(curriculum.difficulty(columns, "length"), [3, 1, 0])
  assert curriculum.group_order("anti", 5) == [4, 3, 2, 1, 0]
  assert curriculum.group_order("none", 5) == [0]
  with pytest.raises(ValueError, match="not one of"):
    curriculum.difficulty(columns, "hardest")


@pytest.mark.parametrize("mode", curriculum.MODES)
def test_dataset_reads_each_example_once_in_curriculum_order(tmp_path, mode):
  ex = _examples(100)
  _write(tmp_path, ex)
  out = list(curriculum.curriculum_dataset(str(tmp_path), "train", mode=mode, k=5, shuffle_buffer=16, switch=0.0)
             .as_numpy_iterator())  # a hard switch: the groups come in whole chunks
  assert sorted(int(o["id"]) for o in out) == list(range(100))
  o = out[0]
  e = ex[int(o["id"])]
  np.testing.assert_array_equal(o["inputs"], e["inputs"])
  np.testing.assert_array_equal(o["targets"], e["targets"])
  scores = curriculum.difficulty(_columns(out), mode).numpy()
  chunks = scores.reshape(5, 20)
  if mode == "none":
    assert not np.all(np.diff(scores) >= 0)  # shuffled, not sorted
  else:
    if mode == "anti":
      chunks = chunks[::-1]
    for g in range(4):
      assert chunks[g].max() <= chunks[g + 1].min()
  cache = json.load(open(os.path.join(tmp_path, f"curriculum-train-{mode}-k{1 if mode == 'none' else 5}.json")))
  assert sum(cache["group_sizes"]) == 100


def test_cache_refresh(tmp_path):
  ex = _examples(60)
  _write(tmp_path, ex[:40])
  ids = [int(o["id"]) for o in curriculum.curriculum_dataset(str(tmp_path), "train", k=2).as_numpy_iterator()]
  assert sorted(ids) == list(range(40))
  _write(tmp_path, ex)  # a new shard appears: the cached boundaries are recomputed
  ids = [int(o["id"]) for o in curriculum.curriculum_dataset(str(tmp_path), "train", k=2).as_numpy_iterator()]
  assert sorted(ids) == list(range(60))


def _schedule(sizes, examples, switch):
  return "".join(str(s) for s in curriculum.slots(np.arange(examples),
                                                    curriculum.plan(sizes, examples, switch)).numpy())


def test_schedule_exact_on_tiny_counts():
  # Window [4, 12) around the boundary at 8: the next group's weight (j + 1/2) / 8 rounded by error diffusion.
  assert _schedule([8, 8], 16, 1.0) == "0000" "0010" "1011" "1111"
  assert _schedule([8, 8], 16, 0.0) == "0" * 8 + "1" * 8  # a hard switch
  # switch 0.5: windows of 2h = 4 around 10 and 20; each group keeps its quota of 10.
  assert _schedule([10, 10, 10], 30, 0.5) == "00000000" "0101" "11111" "1" "12" "12" "22222222"
  assert curriculum.plan([3, 3, 4], 20).quotas == (6, 6, 8)  # each group's share of the run
  assert curriculum.plan([5, 5, 5], 7).quotas == (3, 2, 2)  # largest remainder, ties to the easier group
  assert curriculum.plan([5, 5, 5], 45).repeats == 3.0
  with pytest.raises(ValueError, match="switch"):
    curriculum.plan([5, 5], 10, 1.5)


@pytest.mark.parametrize("sizes, examples, switch", [([20, 21, 20, 21, 20], 1000, 0.5), ([7, 9, 8], 333, 1.0),
                                                     ([50, 50], 30, 0.3)])
def test_schedule_keeps_quotas_and_runs_easy_to_hard_once(sizes, examples, switch):
  the_plan = curriculum.plan(sizes, examples, switch)
  slots = curriculum.slots(np.arange(examples), the_plan).numpy()
  np.testing.assert_array_equal(np.bincount(slots, minlength=len(sizes)), the_plan.quotas)
  assert sum(the_plan.quotas) == examples
  assert np.all(np.abs(np.diff(slots)) <= 1)  # only neighbouring groups mix
  assert slots[0] == 0 and slots[-1] == len(sizes) - 1
  # Once: after group g's first appearance, an earlier group never appears after the window of their boundary.
  first = [int(np.argmax(slots == g)) for g in range(len(sizes))]
  last = [int(len(slots) - 1 - np.argmax(slots[::-1] == g)) for g in range(len(sizes))]
  assert first == sorted(first) and last == sorted(last)
  for g in range(len(sizes) - 2):
    assert last[g] < first[g + 2]
  # The next group's share rises across each window: it is larger in the second half than in the first.
  for b, h in zip(np.cumsum(the_plan.quotas)[:-1], the_plan.half_widths):
    if h >= 4:
      window = slots[b - h:b + h]
      assert np.sum(window[h:] == window.max()) > np.sum(window[:h] == window.max())


def _groups_of(out, tmp_path, mode, k):
  bounds, _ = curriculum.load_groups(str(tmp_path), "train", mode, k)
  scores = curriculum.difficulty(_columns(out), mode)
  return curriculum.assign_groups(scores, np.array([o["id"] for o in out]), bounds).numpy()


@pytest.mark.parametrize("mode, examples", [("loss_length", 60), ("length", 250)])
def test_dataset_follows_the_schedule(tmp_path, mode, examples, caplog):
  """Every read example comes from the group the schedule names; fewer examples than the data: none repeats."""
  _write(tmp_path, _examples(100))
  out = list(curriculum.curriculum_dataset(str(tmp_path), "train", mode, k=5, shuffle_buffer=16,
                                           examples=examples, switch=0.5).as_numpy_iterator())
  assert len(out) == examples
  the_plan = curriculum.run_plan(str(tmp_path), "train", mode, 5, examples, 0.5)
  expected = np.array(curriculum.group_order(mode, 5))[curriculum.slots(np.arange(examples), the_plan).numpy()]
  np.testing.assert_array_equal(_groups_of(out, tmp_path, mode, 5), expected)
  ids = [int(o["id"]) for o in out]
  if examples <= 100:
    assert len(set(ids)) == examples  # no repeat
    assert "repeated" not in caplog.text
  else:
    assert len(set(ids)) == 100 and "repeated about 2.50 times" in caplog.text


def test_repeats_can_be_refused(tmp_path):
  _write(tmp_path, _examples(50))
  with pytest.raises(ValueError, match="holds 50.*CURRICULUM_ON_REPEAT"):
    curriculum.run_plan(str(tmp_path), "train", "loss_length", 5, 51, on_repeat="stop")
  assert curriculum.run_plan(str(tmp_path), "train", "loss_length", 5, 50, on_repeat="stop").repeats == 1.0


def test_per_token_loss_needs_the_sampled_count(tmp_path):
  old = [{k: v for k, v in e.items() if k != "sampled_tokens"} for e in _examples(20)]
  _write(tmp_path, old)  # data written before `sampled_tokens` existed: read as -1
  assert curriculum.load_groups(str(tmp_path), "train", "loss_length", 2)[1] == [10, 10]
  with pytest.raises(ValueError, match="generate the data again"):
    curriculum.load_groups(str(tmp_path), "train", "loss", 2)


def test_missing_data_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="ssr.generate"):
    curriculum.load_boundaries(str(tmp_path), "train", "loss_length", 5)
