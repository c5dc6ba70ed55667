"""SeqIO tasks of spactor; importing this module registers them.

  spactor_sc_<corpus>      inputs, targets: T5's span corruption (T5's `c4_v220_span_corruption` recipe)
  spactor_hybrid_<corpus>  inputs (X_c^MLM), targets, inputs_clean (X_c), mlm_mask: span corruption + MLM

corpus = `sotu` (the embedded State of the Union corpus, splits train/validation, its own SentencePiece model
built on first use) or `c4` (TFDS c4/en:3.1.0, the public T5 vocabulary; gin: spactor.vocab.c4_vocab_file.path).

Nothing is read at import: sources and vocabularies load when a dataset is first asked for, so importing this
module needs neither the network nor a built vocabulary, and gin bindings parsed after the import still apply.
Re-importing (or reloading) replaces our own registrations instead of failing on duplicate names.

A trainer gets model features with
  seqio.get_dataset(hybrid_task_name('sotu'), task_feature_lengths={'inputs': 128, 'targets': 29},
                    dataset_split='train', shuffle=True, num_epochs=None, seed=SEED,
                    shard_info=seqio.ShardInfo(index, num_shards),
                    feature_converter=spactor.feature_converters.SpacTorFeatureConverter(pack=False))
(targets length: spactor.preprocessors.targets_length_for(inputs_length)). Always pass a seed: without one SeqIO
draws the masks at random and the data cannot be replayed.
"""
import functools

import seqio

from spactor import corpus as corpus_lib
from spactor import preprocessors
from spactor import vocab as vocab_lib
from spactor.downstream import metrics as metrics_lib
from spactor.downstream import postprocessors as postprocessors_lib

CORPORA = ('sotu', 'c4')
C4_TFDS_NAME = 'c4/en:3.1.0'

_VOCABULARIES = {'sotu': vocab_lib.sotu_vocabulary(), 'c4': vocab_lib.c4_vocabulary()}


def _check_corpus(corpus: str) -> None:
  if corpus not in CORPORA:
    raise ValueError(f'unknown corpus {corpus!r}; expected one of {CORPORA}')


def sc_task_name(corpus: str) -> str:
  _check_corpus(corpus)
  return f'spactor_sc_{corpus}'


def hybrid_task_name(corpus: str) -> str:
  _check_corpus(corpus)
  return f'spactor_hybrid_{corpus}'


def vocabulary(corpus: str) -> seqio.SentencePieceVocabulary:
  """The (lazily loaded) vocabulary of a corpus's tasks; use spactor.vocab.mask_id / model_vocab_size on it."""
  _check_corpus(corpus)
  return _VOCABULARIES[corpus]


def output_features(vocab: seqio.Vocabulary, hybrid: bool) -> dict:
  """inputs/targets get EOS as in T5; the hybrid features copy the inputs' (EOS already in place)."""
  features = {'inputs': seqio.Feature(vocab, add_eos=True), 'targets': seqio.Feature(vocab, add_eos=True)}
  if hybrid:
    features['inputs_clean'] = seqio.Feature(vocab, add_eos=False)
    features['mlm_mask'] = seqio.Feature(seqio.PassThroughVocabulary(size=2), add_eos=False)
  return features


def task_preprocessors(hybrid: bool) -> list:
  """text -> tokens -> [cache point] -> span corruption -> EOS (-> MLM masking)."""
  steps = [
      functools.partial(seqio.preprocessors.rekey, key_map={'targets': 'text'}),
      functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
      seqio.CacheDatasetPlaceholder(),
      preprocessors.span_corruption,
      seqio.preprocessors.append_eos_after_trim,
  ]
  return steps + [preprocessors.mlm_mask] if hybrid else steps


def source(corpus: str) -> seqio.DataSource:
  _check_corpus(corpus)
  if corpus == 'sotu':
    return corpus_lib.data_source()
  return seqio.TfdsDataSource(tfds_name=C4_TFDS_NAME)


# Validation metrics (t5x.eval, seqio.Evaluator): exact span-corruption targets from greedy decoding, and the
# per-token loss from t5x's scores (summed target log-likelihoods; targets carry their token counts).
METRIC_FNS = (metrics_lib.target_sequence_accuracy, metrics_lib.target_loss)


def register(name: str, data_source: seqio.DataSource, vocab: seqio.Vocabulary, hybrid: bool) -> seqio.Task:
  """Adds the task, replacing an earlier registration of the same name (re-import, reload)."""
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(name, source=data_source, output_features=output_features(vocab, hybrid),
                                preprocessors=task_preprocessors(hybrid),
                                postprocess_fn=postprocessors_lib.text_with_num_tokens, metric_fns=METRIC_FNS)


def register_all() -> None:
  for corpus in CORPORA:
    register(sc_task_name(corpus), source(corpus), vocabulary(corpus), hybrid=False)
    register(hybrid_task_name(corpus), source(corpus), vocabulary(corpus), hybrid=True)


register_all()
