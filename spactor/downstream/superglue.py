"""SuperGLUE as T5 casts it (t5/data/glue_utils.py; preprocessors glue, record, wsc) with the official metrics.

- BoolQ, CB, COPA, RTE, WiC: T5's `glue` format, e.g. 'cb hypothesis: ... premise: ...' -> 'contradiction'
  (COPA: 'copa choice1: ... choice2: ... premise: ... question: effect' -> 'choice2'); WiC keeps T5's field order
  sentence1, sentence2, word. Accuracy; CB also the macro F1 over its 3 classes.
- MultiRC: 'multirc question: ... answer: ... paragraph: ...' (HTML <br> and <b> removed) -> 'True'/'False' per
  answer option; F1a over all options and EM over questions (all options of the question right).
- ReCoRD: 'record query: ... entities: e1, e2 passage: ...' (@highlight lines joined as sentences) -> one example
  per gold answer; EM/F1 once per query, the best over its gold answers.
- WSC (wsc.fixed): 'wsc text: ...' with the candidate marked '* span *' and the pronoun '# span #' -> 'True'/
  'False'; accuracy (T5's `super_glue_wsc.fixed` format).
The `super_glue` mixture samples the tasks in proportion to their examples.
"""
import functools
from typing import Optional, Tuple

import seqio
import tensorflow as tf

from spactor.downstream import common
from spactor.downstream import glue
from spactor.downstream import metrics
from spactor.downstream import postprocessors

TFDS_VERSION = '1.0.2'
MIXTURE_NAME = 'super_glue'
SPLITS = ('train', 'validation', 'test')
BOOL_LABELS = ('False', 'True')

LABELLED_TASKS = (
    glue.GlueTask('boolq', BOOL_LABELS, ('passage', 'question'), (metrics.accuracy,)),
    glue.GlueTask('cb', ('entailment', 'contradiction', 'neutral'), ('hypothesis', 'premise'),
                  (metrics.mean_multiclass_f1(3), metrics.accuracy)),
    glue.GlueTask('copa', ('choice1', 'choice2'), ('choice1', 'choice2', 'premise', 'question'),
                  (metrics.accuracy,)),
    glue.GlueTask('rte', ('entailment', 'not_entailment'), ('hypothesis', 'premise'), (metrics.accuracy,)),
    glue.GlueTask('wic', BOOL_LABELS, ('sentence1', 'sentence2', 'word'), (metrics.accuracy,)),
)


def task_name(config: str) -> str:
  return f'super_glue_{config.split(".")[0]}'


def source(config: str) -> seqio.TfdsDataSource:
  return common.tfds_source(f'super_glue/{config}:{TFDS_VERSION}', SPLITS)


# --- MultiRC -----------------------------------------------------------------------------------------------


def multirc_text_to_text(x: dict) -> dict:
  inputs = tf.strings.join(['multirc', 'question:', x['question'], 'answer:', x['answer'], 'paragraph:',
                            x['paragraph']], separator=' ')
  inputs = tf.strings.regex_replace(inputs, '<br>', ' ')
  inputs = tf.strings.regex_replace(inputs, '<(/)?b>', '')
  return {'inputs': inputs, 'targets': common.label_word(x['label'], BOOL_LABELS),
          'idx/paragraph': x['idx']['paragraph'], 'idx/question': x['idx']['question'],
          'idx/answer': x['idx']['answer']}


# --- ReCoRD ------------------------------------------------------------------------------------------------


def record_passage(passage: tf.Tensor) -> tf.Tensor:
  """@highlight lines become sentences: after end punctuation a space, else '. ' (T5's `record`)."""
  passage = tf.strings.regex_replace(passage, r'(\.|\?|\!|\"|\')\n@highlight\n', r'\1 ')
  return tf.strings.regex_replace(passage, r'\n@highlight\n', '. ')


def record_text_to_text(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """One example per gold answer ('<unk>' when there is none), all answers passed through for the metric."""

  def per_answer(x):
    inputs = tf.strings.join(['record query:', x['query'], 'entities:',
                              tf.strings.reduce_join(x['entities'], separator=', '), 'passage:',
                              record_passage(x['passage'])], separator=' ')
    answers = x['answers']
    targets = tf.cond(tf.size(answers) > 0, lambda: answers, lambda: tf.constant(['<unk>']))
    n = tf.size(targets)
    return tf.data.Dataset.from_tensor_slices({
        'inputs': tf.fill([n], inputs), 'targets': targets,
        'answers': tf.tile(answers[tf.newaxis], [n, 1]),
        'idx/passage': tf.fill([n], x['idx']['passage']), 'idx/query': tf.fill([n], x['idx']['query'])})

  return dataset.flat_map(per_answer)


# --- WSC ---------------------------------------------------------------------------------------------------


def _mark_span(text: tf.Tensor, span: tf.Tensor, word_index: tf.Tensor, mark: str) -> tf.Tensor:
  """Puts `mark` around `span` where it starts at word `word_index` (T5's `wsc._mark_span`)."""
  pattern = tf.strings.join([r'^((?:\S+\s){', tf.strings.as_string(word_index), r'})(',
                             _escape_regex(span), ')'])
  return tf.strings.regex_replace(text, pattern, r'\1{0} \2 {0}'.format(mark))


def _escape_regex(text: tf.Tensor) -> tf.Tensor:
  return tf.strings.regex_replace(text, r'([\\.^$|?*+()\[\]{}])', r'\\\1')


def wsc_text_to_text(x: dict) -> dict:
  text = _mark_span(x['text'], x['span1_text'], x['span1_index'], '*')
  # The first mark added two words before the pronoun when the candidate comes first.
  span2_index = x['span2_index'] + 2 * tf.cast(x['span1_index'] < x['span2_index'], x['span2_index'].dtype)
  text = _mark_span(text, x['span2_text'], span2_index, '#')
  return {'inputs': tf.strings.join(['wsc', 'text:', text], separator=' '),
          'targets': common.label_word(x['label'], BOOL_LABELS), 'idx': x['idx']}


# --- registration ------------------------------------------------------------------------------------------


def task_names() -> Tuple[str, ...]:
  return tuple(task_name(t.config) for t in LABELLED_TASKS) + tuple(
      task_name(c) for c in ('multirc', 'record', 'wsc.fixed'))


def register(vocab: Optional[seqio.Vocabulary] = None) -> None:
  """Registers the eight SuperGLUE tasks and the `super_glue` mixture."""
  vocab = vocab or common.default_vocabulary()
  for task in LABELLED_TASKS:
    preprocess = seqio.map_over_dataset(functools.partial(
        glue.text_to_text, benchmark=task.config, label_names=task.label_names, feature_names=task.feature_names))
    common.register_task(task_name(task.config), source(task.config), [preprocess], glue.postprocess_fn(task),
                         task.metric_fns, vocab)
  common.register_task(task_name('multirc'), source('multirc'), [seqio.map_over_dataset(multirc_text_to_text)],
                       postprocessors.multirc, [metrics.multirc_f1_over_all_answers, metrics.multirc_exact_match],
                       vocab)
  common.register_task(task_name('record'), source('record'), [record_text_to_text], postprocessors.record,
                       [metrics.record], vocab)
  common.register_task(task_name('wsc.fixed'), source('wsc.fixed'), [seqio.map_over_dataset(wsc_text_to_text)],
                       functools.partial(postprocessors.string_label_to_class_id, label_classes=BOOL_LABELS),
                       [metrics.accuracy], vocab)
  common.register_mixture(MIXTURE_NAME, task_names())
