"""What every downstream task shares: the vocabulary, output features, the tokenize tail and (re)registration.

A downstream task is text-to-text: its own preprocessors make `inputs`/`targets` strings (T5's format), then
`tokenize` keeps them as `*_pretokenized` (SeqIO postprocesses targets from those) and EOS is appended after
trimming, as in T5's tasks. Nothing is read here: sources and vocabularies are lazy.
"""
from typing import Callable, Mapping, Optional, Sequence, Union

import seqio
import tensorflow as tf

from spactor import vocab as vocab_lib

Splits = Union[Sequence[str], Mapping[str, str]]


def default_vocabulary() -> seqio.Vocabulary:
  """The public T5 SentencePiece model (gin: spactor.vocab.c4_vocab_file.path), loaded on first use."""
  return vocab_lib.c4_vocabulary()


def output_features(vocab: seqio.Vocabulary) -> dict:
  return {'inputs': seqio.Feature(vocab, add_eos=True), 'targets': seqio.Feature(vocab, add_eos=True)}


def tfds_source(tfds_name: str, splits: Splits) -> seqio.TfdsDataSource:
  """A TFDS source with its splits named here (SeqIO would otherwise read them from the builder's info)."""
  return seqio.TfdsDataSource(tfds_name=tfds_name, splits=splits)


def register_task(name: str, source: seqio.DataSource, text_preprocessors: Sequence[Callable],
                  postprocess_fn: Optional[Callable], metric_fns: Sequence[Callable],
                  vocab: seqio.Vocabulary) -> seqio.Task:
  """Registers `name` (replacing an earlier registration): text preprocessors, then tokenize and EOS."""
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  steps = list(text_preprocessors) + [seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
                                      seqio.preprocessors.append_eos_after_trim]
  return seqio.TaskRegistry.add(name, source=source, output_features=output_features(vocab), preprocessors=steps,
                                postprocess_fn=postprocess_fn, metric_fns=list(metric_fns))


def register_mixture(name: str, task_names: Sequence[str], default_rate=seqio.mixing_rate_num_examples):
  """Registers a mixture (replacing an earlier one); by default sampled in proportion to examples, as T5's."""
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  return seqio.MixtureRegistry.add(name, list(task_names), default_rate=default_rate)


# --- text helpers (TF ops, used inside map_over_dataset functions) ------------------------------------------


def label_word(label: tf.Tensor, label_names: Sequence[str]) -> tf.Tensor:
  """The label's word, or '<unk>' for -1 (unlabelled test splits), as T5's `glue` preprocessor writes it."""
  label = tf.cast(label, tf.int32)
  return tf.cond(tf.equal(label, -1), lambda: tf.constant('<unk>'),
                 lambda: tf.gather(tf.constant(list(label_names)), label))


def join(parts: Sequence) -> tf.Tensor:
  """Parts joined by one space, runs of whitespace collapsed (T5's `_string_join`)."""
  return tf.strings.regex_replace(tf.strings.join(list(parts), separator=' '), r'\s+', ' ')


def pad_punctuation(text: tf.Tensor) -> tf.Tensor:
  """Spaces around each punctuation mark, whitespace collapsed (T5's `_pad_punctuation`, used for SQuAD)."""
  text = tf.strings.regex_replace(text, r'([^_\s\p{N}\p{L}\p{M}])', r' \1 ')
  return tf.strings.regex_replace(text, r'\s+', ' ')
