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
           "imperfect_length": lengths[i], "generator_loss": losses[i]} for i in range(n)]


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
  loss, length = np.array([6.0, 2.0, 0.0]), np.array([3, 1, 0])
  np.testing.assert_allclose(curriculum.difficulty(loss, length, "loss_length"), [6, 2, 0])
  np.testing.assert_allclose(curriculum.difficulty(loss, length, "loss"), [2, 2, 0])
  np.testing.assert_allclose(curriculum.difficulty(loss, length, "length"), [3, 1, 0])
  assert curriculum.group_order("anti", 5) == [4, 3, 2, 1, 0]
  assert curriculum.group_order("none", 5) == [0]
  with pytest.raises(ValueError, match="not one of"):
    curriculum.difficulty(loss, length, "hardest")


@pytest.mark.parametrize("mode", curriculum.MODES)
def test_dataset_reads_each_example_once_in_curriculum_order(tmp_path, mode):
  ex = _examples(100)
  _write(tmp_path, ex)
  out = list(curriculum.curriculum_dataset(str(tmp_path), "train", mode=mode, k=5, shuffle_buffer=16)
             .as_numpy_iterator())
  assert sorted(int(o["id"]) for o in out) == list(range(100))
  o = out[0]
  e = ex[int(o["id"])]
  np.testing.assert_array_equal(o["inputs"], e["inputs"])
  np.testing.assert_array_equal(o["targets"], e["targets"])
  scores = curriculum.difficulty(np.array([o["generator_loss"] for o in out]),
                                 np.array([o["imperfect_length"] for o in out]), mode).numpy()
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


def test_group_epochs_and_cache_refresh(tmp_path):
  ex = _examples(60)
  _write(tmp_path, ex[:40])
  ids = [int(o["id"]) for o in curriculum.curriculum_dataset(str(tmp_path), "train", k=2, group_epochs=2)
         .as_numpy_iterator()]
  # Group 0 twice, then group 1 twice.
  assert len(ids) == 80 and len(set(ids[:20])) == 20
  assert set(ids[:20]) == set(ids[20:40]) and set(ids[40:60]) == set(ids[60:80])
  _write(tmp_path, ex)  # a new shard appears: the cached boundaries are recomputed
  ids = [int(o["id"]) for o in curriculum.curriculum_dataset(str(tmp_path), "train", k=2).as_numpy_iterator()]
  assert sorted(ids) == list(range(60))


def test_missing_data_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="ssr.generate"):
    curriculum.load_boundaries(str(tmp_path), "train", "loss_length", 5)
