"""Shared pytest fixtures. Keep each fixture small, documented, and session-scoped when it is costly."""
import pytest
import seqio
import seqio.test_utils

from spactor import vocab as vocab_lib


@pytest.fixture(scope='session')
def tiny_vocab() -> seqio.SentencePieceVocabulary:
  """seqio's own 26-piece test SentencePiece model with 10 sentinels: vocab_size 36, sentinels 35..26, [M] 36.

  Small ids make exact expected outputs readable.
  """
  return seqio.test_utils.sentencepiece_vocab(extra_ids=10)


@pytest.fixture(scope='session')
def small_sotu_vocab_file(tmp_path_factory) -> str:
  """A 1000-piece sotu model trained on the first 20 train speeches (under a second), in a temporary cache."""
  return vocab_lib.build_sotu_model(num_pieces=1000, max_documents=20,
                                    directory=str(tmp_path_factory.mktemp('spactor_vocab')))


@pytest.fixture(scope='session')
def small_sotu_vocab(small_sotu_vocab_file) -> seqio.SentencePieceVocabulary:
  return vocab_lib.load(small_sotu_vocab_file)


@pytest.fixture(scope='session', autouse=True)
def strict_rank_promotion():
  """As the trainer runs: an implicit rank promotion is a bug, so make it an error in every test."""
  import jax
  with jax.numpy_rank_promotion('raise'):
    yield
