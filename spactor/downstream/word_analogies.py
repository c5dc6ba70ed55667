"""Word analogies (Mikolov et al. 2013, 'a is to b as c is to d'), read from the PyPI package `gensim`.

gensim (LGPL-2.1) ships word2vec's analogy test set (Apache-2.0) as `test/test_data/questions-words.txt`: 19544
questions in 14 categories, 5 semantic (capital-world, currency, family, ...) and 9 syntactic (plural, past tense,
comparative, ...). The file is read in place, without importing gensim; nothing is copied into this repository.

As a generation task the model completes d from (a, b, c). Splits are fixed by a SHA-256 of the pair (c, d) being
asked, and a question is kept only when its example pair (a, b) is a train pair: a validation or test answer pair
never appears in training, neither asked nor as an example, so the task measures applying a relation to new words
rather than recalling seen pairs. The hash leaves the category out: several pairs occur in two categories
(capital-common-countries repeats pairs of capital-world), and one pair must get one split in both.
"""
import dataclasses
import functools
import os
from typing import Dict, Iterable, Tuple

from spactor.downstream import package_data

SPLITS = package_data.SPLITS
DATA_FILE = os.path.join('test', 'test_data', 'questions-words.txt')
REQUIREMENT = 'gensim>=4.3,<5'


@dataclasses.dataclass(frozen=True)
class Analogy:
  category: str
  a: str
  b: str
  c: str
  d: str


def data_path() -> str:
  return package_data.package_file('gensim', DATA_FILE, REQUIREMENT)


def pair_split(first: str, second: str) -> str:
  """The split of a word pair, whatever category it appears in."""
  return package_data.hash_split(f'{first}\t{second}')


def parse(lines: Iterable[str]) -> Tuple[Analogy, ...]:
  """': category' headers, then 'a b c d' lines; blank lines skipped, any other line is an error (named)."""
  category, analogies = None, []
  for number, line in enumerate(lines, 1):
    line = line.strip()
    if not line:
      continue
    if line.startswith(':'):
      category = line[1:].strip()
      continue
    words = line.split()
    if category is None or len(words) != 4:
      raise ValueError(f'line {number} of the analogy file is not "a b c d" under a ": category" header: '
                       f'{line!r}; reinstall `gensim`')
    analogies.append(Analogy(category, *words))
  return tuple(analogies)


def split_of(analogy: Analogy) -> str:
  """The split of the asked pair (c, d), or 'unused' when the example pair (a, b) is not a train pair."""
  if pair_split(analogy.a, analogy.b) != 'train':
    return 'unused'
  return pair_split(analogy.c, analogy.d)


@functools.lru_cache(maxsize=None)
def analogies_by_split() -> Dict[str, Tuple[Analogy, ...]]:
  path = data_path()
  try:
    with open(path, encoding='utf-8') as f:
      analogies = parse(f)
  except (OSError, UnicodeDecodeError, ValueError) as e:
    raise package_data.DataMissingError(f'cannot read {path} ({e}); reinstall `gensim`') from e
  if not analogies:
    raise package_data.DataMissingError(f'{path} has no analogies; reinstall `gensim`')
  return {split: tuple(a for a in analogies if split_of(a) == split) for split in SPLITS}


def analogies(split: str) -> Tuple[Analogy, ...]:
  if split not in SPLITS:
    raise ValueError(f'unknown split {split!r} of the word-analogy task; expected one of {SPLITS}')
  return analogies_by_split()[split]
