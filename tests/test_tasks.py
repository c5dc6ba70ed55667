"""The registered SeqIO tasks: sotu end to end (validation split, to stay fast) and C4 on TFDS mock data.

The sotu tasks use the default sotu vocabulary, built into $SPACTOR_CACHE_DIR on first use (~10 s, once).
"""
import importlib

import gin
import numpy as np
import pytest
import seqio
import tensorflow_datasets as tfds

from spactor import tasks
from spactor import feature_converters
from spactor import vocab as vocab_lib

LENGTHS = {'inputs': 128, 'targets': 29}


def _examples(name, split='validation', seed=0, shuffle=False, lengths=LENGTHS, limit=-1, **kwargs):
  ds = seqio.get_mixture_or_task(name).get_dataset(lengths, split=split, shuffle=shuffle, seed=seed, **kwargs)
  return list(ds.take(limit).as_numpy_iterator())


@pytest.fixture(scope='module')
def sc_examples():
  return _examples(tasks.sc_task_name('sotu'))


@pytest.fixture(scope='module')
def hybrid_examples():
  return _examples(tasks.hybrid_task_name('sotu'))


@pytest.fixture
def fresh_tasks():
  """Re-registers the tasks (new, unloaded vocabularies) before and after a test that binds gin or the cache."""
  importlib.reload(tasks)
  yield tasks
  gin.clear_config()
  importlib.reload(tasks)


def test_all_tasks_registered_and_reimport_is_safe():
  importlib.reload(tasks)
  importlib.reload(tasks)
  names = set(seqio.TaskRegistry.names())
  assert {'spactor_sc_sotu', 'spactor_hybrid_sotu', 'spactor_sc_c4', 'spactor_hybrid_c4'} <= names
  assert set(seqio.get_mixture_or_task('spactor_sc_sotu').splits) == {'train', 'validation'}
  c4 = seqio.get_mixture_or_task('spactor_hybrid_c4')
  assert c4.source.tfds_dataset.name == 'c4/en:3.1.0'
  with pytest.raises(ValueError, match='unknown corpus'):
    tasks.vocabulary('wiki')


def test_import_reads_nothing(fresh_tasks, tmp_path, monkeypatch):
  monkeypatch.setenv('SPACTOR_CACHE_DIR', str(tmp_path))
  monkeypatch.setattr(vocab_lib, 'train_sentencepiece', lambda *a, **k: pytest.fail('built at import'))
  with gin.unlock_config():
    gin.bind_parameter('spactor.vocab.c4_vocab_file.path', str(tmp_path / 'missing.model'))
  importlib.reload(tasks)  # no corpus, vocabulary or network access here
  assert list(tmp_path.iterdir()) == []
  with pytest.raises(FileNotFoundError, match='missing.model'):
    _ = tasks.vocabulary('c4').vocab_size


def test_sotu_vocabulary_ids():
  v = tasks.vocabulary('sotu')
  assert (vocab_lib.mask_id(v), vocab_lib.model_vocab_size(v)) == (4100, 4224)


def test_sc_examples_are_full_length_span_corruption(sc_examples):
  assert len(sc_examples) > 500
  full = [ex for ex in sc_examples if len(ex['inputs']) == LENGTHS['inputs']]
  assert len(full) >= len(sc_examples) - 1  # only the end of the concatenated stream is short
  first_sentinel = tasks.vocabulary('sotu').vocab_size - 100
  for ex in sc_examples:
    inputs, targets = ex['inputs'], ex['targets']
    assert set(ex) == {'inputs', 'targets'} and len(targets) <= LENGTHS['targets']
    assert inputs[-1] == targets[-1] == 1 and 0 not in inputs and 0 not in targets
    in_sentinels, out_sentinels = inputs[inputs >= first_sentinel], targets[targets >= first_sentinel]
    np.testing.assert_array_equal(in_sentinels, out_sentinels)
    np.testing.assert_array_equal(in_sentinels, 4099 - np.arange(len(in_sentinels)))
  assert all(len(ex['targets']) == LENGTHS['targets'] for ex in full)  # 141 raw -> 21 noise in 7 spans


def test_hybrid_is_sc_plus_mlm(sc_examples, hybrid_examples):
  v = tasks.vocabulary('sotu')
  assert len(hybrid_examples) == len(sc_examples)
  for sc, ex in zip(sc_examples, hybrid_examples):
    np.testing.assert_array_equal(ex['inputs_clean'], sc['inputs'])  # same seed: same span corruption
    np.testing.assert_array_equal(ex['targets'], sc['targets'])
    mask = ex['mlm_mask'] == 1
    eligible = (sc['inputs'] > 1) & (sc['inputs'] < v.vocab_size - 100)
    assert mask.sum() == round(0.15 * eligible.sum()) and not (mask & ~eligible).any()
    np.testing.assert_array_equal(ex['inputs'], np.where(mask, vocab_lib.mask_id(v), sc['inputs']))


@pytest.mark.parametrize('pack', [False, True])
def test_model_features_through_seqio_get_dataset(pack):
  ds = seqio.get_dataset(tasks.hybrid_task_name('sotu'), LENGTHS, feature_converters.SpacTorFeatureConverter(pack),
                         dataset_split='validation', shuffle=False, seed=1, batch_size=4)
  batch = next(ds.as_numpy_iterator())
  expected = feature_converters.SpacTorFeatureConverter(pack).get_model_feature_lengths(LENGTHS)
  assert {k: v.shape for k, v in batch.items()} == {k: (4, n) for k, n in expected.items()}
  mask = batch['encoder_mlm_mask'] == 1
  assert mask.any()
  np.testing.assert_array_equal(batch['encoder_input_tokens'][mask], 4100)
  np.testing.assert_array_equal(batch['encoder_input_tokens'][~mask], batch['encoder_clean_tokens'][~mask])


def test_seeded_shuffle_is_reproducible_and_shards_are_disjoint():
  name = tasks.sc_task_name('sotu')
  take = lambda **kw: [ex['inputs'].tobytes()
                       for ex in _examples(name, shuffle=True, seed=3, limit=50, shuffle_buffer_size=100, **kw)]
  assert take() == take()
  shard0 = set(take(shard_info=seqio.ShardInfo(0, 2)))
  shard1 = set(take(shard_info=seqio.ShardInfo(1, 2)))
  assert shard0 and shard1 and shard0.isdisjoint(shard1)


def test_gin_reaches_the_task_preprocessors(fresh_tasks):
  with gin.unlock_config():
    gin.parse_config(['MLM_RATIO = 0.3', 'spactor.preprocessors.mlm_mask.mlm_ratio = %MLM_RATIO'])
  v = tasks.vocabulary('sotu')
  for ex in _examples(tasks.hybrid_task_name('sotu'), limit=20):
    eligible = (ex['inputs_clean'] > 1) & (ex['inputs_clean'] < v.vocab_size - 100)
    assert ex['mlm_mask'].sum() == round(0.3 * eligible.sum())


def test_c4_tasks_on_mock_tfds(fresh_tasks, small_sotu_vocab_file):
  with gin.unlock_config():
    gin.bind_parameter('spactor.vocab.c4_vocab_file.path', small_sotu_vocab_file)
  # Mocked TFDS info has no split sizes, which SeqIO's in-memory cache check reads: skip that check.
  with tfds.testing.mock_data(num_examples=300):
    sc = _examples(tasks.sc_task_name('c4'), split='train', try_in_mem_cache=False)
    hybrid = _examples(tasks.hybrid_task_name('c4'), split='train', try_in_mem_cache=False)
  assert tasks.vocabulary('c4').vocab_size == 1100
  assert len(sc) == len(hybrid) > 5
  short = [ex for ex in sc if len(ex['inputs']) < LENGTHS['inputs']]
  assert len(short) <= 3  # at most the last piece of each group of 128 concatenated documents
  for plain, ex in zip(sc, hybrid):
    np.testing.assert_array_equal(ex['inputs_clean'], plain['inputs'])
    assert ex['mlm_mask'].sum() > 0 and set(np.unique(ex['inputs'][ex['mlm_mask'] == 1])) == {1100}
