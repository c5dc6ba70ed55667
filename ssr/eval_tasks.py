"""Downstream tasks in SSR's fine-tuning format (Section 3.1): input `<s_1> x </s_1>`, target `<s_1> y`.

Importing this module registers:
  ssr_squad_qg   SQuAD question generation on the split of Du et al. (2017) (TFDS squad_question_generation/split_du,
                 the data and text of spactor.downstream.squad's `squad_qg`: answer + passage -> question), scored
                 with BLEU-4 (spactor.downstream's, sacrebleu, lowercased), METEOR and CIDEr-D (ssr.eval_metrics);
  ssr_gec        grammatical error correction over M2 files named by gin (`ssr.eval_tasks.gec_m2_files`; no GEC
                 data ships offline): the input is the source sentence, the target the first annotator's
                 correction, the metric M^2 P/R/F_0.5 against every annotator's gold edits (ssr.maxmatch).
`register_gec_task` registers the same over files given in Python.

Decoded predictions begin with the text of `<s_1>` (T5's `<extra_id_0>`); the postprocessor removes it. Fine-tune
and evaluate with `python -m spactor.finetune` (gin/ssr/finetune_squad_qg.gin; docs/ssr.md).
"""
import functools
from typing import Mapping, Optional

import gin
import seqio
import tensorflow as tf

from spactor.downstream import common, squad
from ssr import eval_metrics, formatting, maxmatch

QG_NAME = "ssr_squad_qg"
GEC_NAME = "ssr_gec"
GEC_SPLITS = ("train", "validation", "test")
OUTPUT_MARKER_TEXT = "<extra_id_0>"  # how a seqio SentencePiece vocabulary decodes `<s_1>` (extra id 0)


def strip_output_marker_text(output, example=None, is_target=False):
  """Drops the leading `<s_1>` text of a decoded prediction (targets come from the pretokenized text as they are)."""
  del example
  text = output.decode("utf-8") if isinstance(output, bytes) else output
  if is_target:
    return text
  text = text.strip()
  return text[len(OUTPUT_MARKER_TEXT):].strip() if text.startswith(OUTPUT_MARKER_TEXT) else text


def ssr_steps(text_preprocessors):
  """Text preprocessors, then tokenize, wrap in the SSR markers (trimming first) and append EOS."""
  return list(text_preprocessors) + [seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
                                     formatting.ssr_downstream, seqio.preprocessors.append_eos_after_trim]


def _register(name, source, steps, postprocess_fn, metric_fns, vocab):
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(name, source=source, output_features=common.output_features(vocab),
                                preprocessors=steps, postprocess_fn=postprocess_fn, metric_fns=list(metric_fns))


def register_squad_qg(vocab: Optional[seqio.Vocabulary] = None) -> seqio.Task:
  """SQuAD QG in the SSR format: spactor.downstream's source and text, BLEU-4 + METEOR + CIDEr-D."""
  vocab = vocab or common.default_vocabulary()
  return _register(QG_NAME, common.tfds_source(squad.QG_TFDS, ("train", "validation", "test")),
                   ssr_steps([seqio.map_over_dataset(squad.question_generation_text_to_text)]),
                   strip_output_marker_text, [squad.lowercase_bleu, eval_metrics.qg_metrics], vocab)


# --- grammatical error correction from M2 files ---------------------------------------------------------------


def apply_edits(tokens, edits) -> str:
  """The corrected sentence: each edit's first correction in place of its span (edits in source order)."""
  out, cursor = [], 0
  for start, end, _, corrections in sorted(edits, key=lambda e: (e[0], e[1])):
    if start < cursor:
      continue  # overlaps an edit already applied
    out += list(tokens[cursor:start]) + corrections[0].split()
    cursor = end
  return " ".join(out + list(tokens[cursor:]))


def m2_blocks(text: str) -> list[str]:
  return [block.strip() for block in text.strip().split("\n\n") if block.strip()]


def gec_examples(m2_text: str) -> list[dict]:
  """{inputs: source, targets: first annotator's correction, m2: the sentence's M2 block} per M2 sentence."""
  examples = []
  for block in m2_blocks(m2_text):
    (sentence,) = maxmatch.parse_m2(block)  # one `S` line per block, as CoNLL-2014 and BEA files have
    first = sentence.gold[min(sentence.gold)]
    examples.append({"inputs": sentence.source, "targets": apply_edits(sentence.source.split(), first),
                     "m2": block})
  return examples


@gin.configurable(module="ssr.eval_tasks")
def gec_m2_files(train: Optional[str] = None, validation: Optional[str] = None, test: Optional[str] = None) -> dict:
  """The M2 files of the `ssr_gec` task (gin: ssr.eval_tasks.gec_m2_files.train = 'nucle.m2', ...)."""
  return {"train": train, "validation": validation, "test": test}


def _gec_dataset(split, shuffle_files=False, seed=None, *, m2_files=None):
  del shuffle_files, seed
  m2_files = m2_files if m2_files is not None else gec_m2_files()
  if not m2_files.get(split):
    raise ValueError(f"no M2 file for the {split!r} split of the GEC task: bind ssr.eval_tasks.gec_m2_files.{split} "
                     f"(gin/ssr/finetune_gec.gin)")
  if not tf.io.gfile.exists(m2_files[split]):
    raise FileNotFoundError(f"the {split!r} M2 file of the GEC task, {m2_files[split]}, does not exist")
  with tf.io.gfile.GFile(m2_files[split]) as f:
    examples = gec_examples(f.read())
  if not examples:
    raise ValueError(f"the M2 file {m2_files[split]} ({split}) holds no sentence")
  columns = {key: [e[key] for e in examples] for key in ("inputs", "targets", "m2")}
  return tf.data.Dataset.from_tensor_slices(columns)


def gec_postprocess(output, example=None, is_target=False):
  """Predictions lose their `<s_1>` text; a target becomes its sentence's M2 block (what M^2 scores against)."""
  if is_target:
    block = example["m2"]
    return block.decode("utf-8") if isinstance(block, bytes) else block
  return strip_output_marker_text(output)


def m2_from_blocks(targets, predictions, beta: float = 0.5) -> dict[str, float]:
  """M^2 P/R/F_beta (percent) of predictions against the M2 blocks that gec_postprocess makes the targets."""
  sentences = [s for block in targets for s in maxmatch.parse_m2(block)]
  result = maxmatch.m2_score(list(predictions), sentences, beta)
  return {"m2_precision": 100 * result["precision"], "m2_recall": 100 * result["recall"],
          "m2_f0.5" if beta == 0.5 else f"m2_f{beta:g}": 100 * result["f"]}


def register_gec_task(name: str = GEC_NAME, m2_files: Optional[Mapping[str, str]] = None,
                      vocab: Optional[seqio.Vocabulary] = None) -> seqio.Task:
  """GEC in the SSR format over M2 files, e.g. {'train': 'nucle.m2', 'validation': 'bea_dev.m2', 'test':
  'conll14st-test.m2'} (tokenized text, as those files are; None: the gin-bound gec_m2_files, read when the data
  is); M^2 F_0.5 as CoNLL-2014 scores it."""
  vocab = vocab or common.default_vocabulary()
  m2_files = dict(m2_files) if m2_files is not None else None
  source = seqio.FunctionDataSource(functools.partial(_gec_dataset, m2_files=m2_files),
                                    splits=tuple(m2_files) if m2_files is not None else GEC_SPLITS)
  return _register(name, source, ssr_steps([]), gec_postprocess, [m2_from_blocks], vocab)


register_squad_qg()
register_gec_task()
