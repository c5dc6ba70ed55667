"""seqio.Evaluator (what t5x.eval and the fine-tuning command run) on our tasks, with stand-in model functions.

The pre-training tasks report sequence accuracy from predictions and the per-token loss from scores; the
embedded downstream task its accuracy/F1 through the label postprocessor.
"""
import numpy as np
import pytest
import seqio
import tensorflow as tf

from spactor import tasks
from spactor.downstream import embedded


def _evaluator(name, lengths, num_examples):
  return seqio.Evaluator(name, feature_converter=seqio.EncDecFeatureConverter(pack=False), eval_split='validation',
                         sequence_length=lengths, num_examples=num_examples, async_compute_metrics=False)


def _evaluate(evaluator, predict, score=None):
  """The evaluator's metrics for stand-in model functions of one model-features example."""
  score_fn = None if score is None else (lambda ds: [(i, score(ex)) for i, ex in ds.as_numpy_iterator()])
  metrics, _ = evaluator.evaluate(compute_metrics=True, predict_fn=lambda ds: [
      (i, predict(ex)) for i, ex in ds.as_numpy_iterator()], score_fn=score_fn)
  (result,) = metrics.result().values()
  return result


@pytest.fixture
def small_sc_task(small_sotu_vocab):
  """An SC task registered by tasks.register (as every pre-training task) over a few short documents."""
  docs = [' '.join(f'word{i} number{j} of the speech.' for j in range(40)) for i in range(6)]
  source = seqio.FunctionDataSource(lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
      {'text': docs}), splits=('validation',))
  yield tasks.register('test_downstream_small_sc', source, small_sotu_vocab, hybrid=False).name
  seqio.TaskRegistry.remove('test_downstream_small_sc')


def test_pretraining_tasks_have_prediction_and_score_metrics():
  for corpus in tasks.CORPORA:
    for name in (tasks.sc_task_name(corpus), tasks.hybrid_task_name(corpus)):
      task = seqio.get_mixture_or_task(name)
      assert list(task.predict_metric_fns) == [tasks.METRIC_FNS[0]]
      assert list(task.score_metric_fns) == [tasks.METRIC_FNS[1]]


def test_pretraining_task_reports_sequence_accuracy_and_loss(small_sc_task):
  evaluator = _evaluator(small_sc_task, {'inputs': 64, 'targets': 16}, 4)
  got = _evaluate(evaluator, predict=lambda ex: ex['decoder_target_tokens'],  # the targets themselves: all exact
                  score=lambda ex: -0.5 * float(np.sum(ex['decoder_loss_weights'])))  # log-lik. -0.5 a token
  assert got == pytest.approx({'sequence_accuracy': 100.0, 'loss': 0.5})

  eos_only = _evaluate(evaluator, predict=lambda ex: np.array([1]),
                       score=lambda ex: -2.0 * float(np.sum(ex['decoder_loss_weights'])))
  assert eos_only == pytest.approx({'sequence_accuracy': 0.0, 'loss': 2.0})


def test_embedded_task_metrics_through_the_evaluator():
  vocab = embedded.vocabulary()
  positive = np.array(vocab.encode('positive') + [1])
  got = _evaluate(_evaluator(embedded.TASK_NAME, embedded.feature_lengths(), 40), predict=lambda ex: positive)
  gold = [label == 'positive' for _, label in embedded.rotten_tomatoes.examples('validation')[:40]]
  share = sum(gold) / len(gold)
  assert got == pytest.approx({'accuracy': 100 * share, 'f1': 100 * 2 * share / (1 + share)})
