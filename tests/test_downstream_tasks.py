"""Every TFDS downstream task end to end on `tfds.testing.mock_data`: text format, tokens, postprocess, metrics.

The tasks are re-registered on the small sotu test vocabulary (no public T5 file needed) and restored after.
"""
import re

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

import spactor.downstream as downstream
from spactor import vocab as vocab_lib
from spactor.downstream import common
from spactor.downstream import glue
from spactor.downstream import rainbow
from spactor.downstream import superglue

LENGTHS = {'inputs': 256, 'targets': 32}
BOOL = {'True', 'False'}
# task -> (regex the inputs text matches, the set the target text is in, or None for free text)
EXPECTED = {
    'glue_cola': (r'cola sentence: ', {'acceptable', 'unacceptable'}),
    'glue_sst2': (r'sst2 sentence: ', {'positive', 'negative'}),
    'glue_mrpc': (r'mrpc sentence1: .* sentence2: ', {'equivalent', 'not_equivalent'}),
    'glue_qqp': (r'qqp question1: .* question2: ', {'duplicate', 'not_duplicate'}),
    'glue_stsb': (r'stsb sentence1: .* sentence2: ', None),
    'glue_mnli': (r'mnli hypothesis: .* premise: ', {'entailment', 'neutral', 'contradiction'}),
    'glue_mnli_mismatched': (r'mnli hypothesis: .* premise: ', {'entailment', 'neutral', 'contradiction'}),
    'glue_qnli': (r'qnli question: .* sentence: ', {'entailment', 'not_entailment'}),
    'glue_rte': (r'rte sentence1: .* sentence2: ', {'entailment', 'not_entailment'}),
    'glue_wnli': (r'wnli sentence1: .* sentence2: ', {'entailment', 'not_entailment'}),
    'super_glue_boolq': (r'boolq passage: .* question: ', BOOL),
    'super_glue_cb': (r'cb hypothesis: .* premise: ', {'entailment', 'contradiction', 'neutral'}),
    'super_glue_copa': (r'copa choice1: .* choice2: .* premise: .* question: ', {'choice1', 'choice2'}),
    'super_glue_rte': (r'rte hypothesis: .* premise: ', {'entailment', 'not_entailment'}),
    'super_glue_wic': (r'wic sentence1: .* sentence2: .* word: ', BOOL),
    'super_glue_multirc': (r'multirc question: .* answer: .* paragraph: ', BOOL),
    'super_glue_record': (r'record query: .* entities: .* passage: ', None),
    'super_glue_wsc': (r'wsc text: ', BOOL),
    'squad_v1': (r'question: .* context: ', None),
    'squad_qg': (r'generate question: answer: .* context: ', None),
    'cnn_dailymail': (r'summarize: ', None),
    'xsum': (r'summarize: ', None),
    'rainbow_piqa': (r'\[physicaliqa\]:\n<goal>.*</goal>\n<solution0>.*</solution0>\n<solution1>', {'0', '1'}),
    'rainbow_hellaswag': (r'\[hellaswag\]:\n<context>.*</context>\n<ending0>.*<ending3>', None),
    'rainbow_cosmosqa': (r'\[cosmosqa\]:\n<context>.*</context>\n<question>.*<answer3>', {'0', '1', '2', '3'}),
    'rainbow_winogrande': (r'\[winogrande\]:\n<sentence>.*</sentence>\n<option0>.*<option1>', {'0', '1'}),
}


@pytest.fixture(scope='module')
def small_vocab_tasks(small_sotu_vocab):
  downstream.register_all(small_sotu_vocab, small_sotu_vocab)
  yield small_sotu_vocab
  downstream.register_all()


def _examples(name, split='validation'):
  with tfds.testing.mock_data(num_examples=2):
    ds = seqio.get_mixture_or_task(name).get_dataset(LENGTHS, split=split, shuffle=False, try_in_mem_cache=False)
    return list(ds.as_numpy_iterator())


def _text(value):
  return value.decode('utf-8')


def value(postprocessed):
  """The class (or text) of a postprocessed target or prediction, without MultiRC/ReCoRD's group."""
  return postprocessed['value'] if isinstance(postprocessed, dict) else postprocessed


def test_every_task_is_listed_and_registered():
  assert set(EXPECTED) == set(downstream.tfds_task_names())
  assert set(downstream.task_names()) <= set(seqio.TaskRegistry.names())
  assert set(seqio.get_mixture_or_task('glue').tasks) == {
      seqio.get_mixture_or_task(n) for n in glue.task_names() if n != glue.MNLI_MISMATCHED_NAME}
  assert {t.name for t in seqio.get_mixture_or_task('super_glue').tasks} == set(superglue.task_names())


def test_registration_reads_nothing():
  def fail():
    raise AssertionError('vocabulary read at registration')
  downstream.register_all(vocab_lib.LazyVocabulary(fail), vocab_lib.LazyVocabulary(fail))
  downstream.register_all()


def test_label_words_are_the_tfds_label_names():
  with tfds.testing.mock_data(num_examples=1):
    for task in glue.TASKS:
      if task.label_names:
        assert tuple(tfds.builder(f'glue/{task.config}').info.features['label'].names) == task.label_names
    for task in superglue.LABELLED_TASKS:
      assert tuple(tfds.builder(f'super_glue/{task.config}').info.features['label'].names) == task.label_names


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_task_end_to_end(small_vocab_tasks, name):
  pattern, targets = EXPECTED[name]
  task = seqio.get_mixture_or_task(name)
  assert 'validation' in task.splits and task.output_features['targets'].vocabulary == small_vocab_tasks
  examples = _examples(name)
  assert examples
  for ex in examples:
    inputs, target = _text(ex['inputs_pretokenized']), _text(ex['targets_pretokenized'])
    assert re.match(pattern, inputs, flags=re.S), inputs
    assert targets is None or target in targets, target
    for key in ('inputs', 'targets'):  # tokens of the text, EOS appended
      assert ex[key][-1] == 1 and small_vocab_tasks.decode(ex[key].tolist()) == small_vocab_tasks.decode(
          small_vocab_tasks.encode(_text(ex[f'{key}_pretokenized']))[:LENGTHS[key] - 1])

  def postprocessed(predict):
    gold = [task.postprocess_fn(_text(ex['targets_pretokenized']), example=ex, is_target=True) for ex in examples]
    return gold, [task.postprocess_fn(predict(ex), example=ex, is_target=False) for ex in examples]

  gold, right = postprocessed(lambda ex: _text(ex['targets_pretokenized']))
  _, wrong = postprocessed(lambda ex: 'qqq zzz')
  if targets is not None:  # a label task: the right words map to the gold classes, a wrong word to none of them
    assert [value(r) for r in right] == [value(g) for g in gold]
    assert all(value(w) not in (value(g) for g in gold) for w in wrong)
  right_scores, wrong_scores = ([fn(gold, p) for fn in task.metric_fns] for p in (right, wrong))
  assert right_scores and all(set(r) == set(w) for r, w in zip(right_scores, wrong_scores))
  for r, w in zip(right_scores, wrong_scores):
    for key in r:
      assert np.isnan(w[key]) or r[key] >= w[key], (key, r, w)


def test_stsb_target_is_the_score_rounded_to_a_fifth():
  with tfds.testing.mock_data(num_examples=2):
    raw = list(tfds.load('glue/stsb:2.0.0', split='validation').as_numpy_iterator())
  for ex, out in zip(raw, _examples('glue_stsb')):
    assert _text(out['targets_pretokenized']) == f'{round(ex["label"] * 5) / 5:.1f}'


def test_record_has_one_example_per_answer():
  with tfds.testing.mock_data(num_examples=2):
    raw = list(tfds.load('super_glue/record:1.0.2', split='validation').as_numpy_iterator())
  out = _examples('super_glue_record')
  assert len(out) == sum(max(len(ex['answers']), 1) for ex in raw)
  assert [_text(a) for a in out[0]['answers']] == [_text(a) for a in raw[0]['answers']]


def test_text_preprocessors_on_hand_written_examples():
  wsc = superglue.wsc_text_to_text({
      'text': tf.constant('Mark told Pete many lies about himself, which Pete included in his book.'),
      'span1_text': tf.constant('Pete'), 'span1_index': tf.constant(2), 'span2_text': tf.constant('his'),
      'span2_index': tf.constant(11), 'label': tf.constant(1, tf.int64), 'idx': tf.constant(0)})
  assert _text(wsc['inputs'].numpy()) == ('wsc text: Mark told * Pete * many lies about himself, which Pete '
                                          'included in # his # book.')
  assert _text(superglue.record_passage(tf.constant('A.\n@highlight\nB\n@highlight\nC')).numpy()) == 'A. B. C'
  multirc = superglue.multirc_text_to_text({
      'question': tf.constant('Q?'), 'answer': tf.constant('A'), 'paragraph': tf.constant('<b>S1</b><br>S2'),
      'label': tf.constant(0, tf.int64), 'idx': {'paragraph': 1, 'question': 2, 'answer': 3}})
  assert _text(multirc['inputs'].numpy()) == 'multirc question: Q? answer: A paragraph: S1 S2'
  assert _text(multirc['targets'].numpy()) == 'False'
  assert _text(common.pad_punctuation(tf.constant("It's 3.5, ok")).numpy()) == "It ' s 3 . 5 , ok"
  assert _text(common.label_word(tf.constant(-1), ('a', 'b')).numpy()) == '<unk>'
  piqa = {'goal': tf.constant('Dry a shirt'), 'sol1': tf.constant('hang it'), 'sol2': tf.constant('eat it')}
  assert _text(rainbow.piqa(dict(piqa, label=tf.constant(0, tf.int64)))['inputs'].numpy()) == (
      '[physicaliqa]:\n<goal>Dry a shirt</goal>\n<solution0>hang it</solution0>\n<solution1>eat it</solution1>')
  assert [_text(rainbow.piqa(dict(piqa, label=tf.constant(v, tf.int64)))['targets'].numpy()) for v in (1, -1)] == [
      '1', '<unk>']
