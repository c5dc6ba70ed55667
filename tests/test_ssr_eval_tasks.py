"""SSR-format downstream tasks: SQuAD QG (TFDS mock data) and GEC over M2 files, end to end through the metrics."""
import numpy as np
import pytest
import seqio
import tensorflow_datasets as tfds

from ssr import eval_tasks, formatting

M2 = """S He go to school yesterday .
A 1 2|||R:VERB:TENSE|||went|||REQUIRED|||-NONE-|||0

S I like apple .
A 2 3|||R:NOUN:NUM|||apples|||REQUIRED|||-NONE-|||0
A 2 2|||M:DET|||an||the|||REQUIRED|||-NONE-|||1
"""


@pytest.fixture
def qg_task(small_sotu_vocab):
  yield eval_tasks.register_squad_qg(small_sotu_vocab)
  eval_tasks.register_squad_qg()  # back on the default vocabulary (loaded lazily)


def test_output_marker_text_is_how_the_vocabulary_decodes_s1(small_sotu_vocab):
  markers = formatting.span_markers(small_sotu_vocab)
  assert small_sotu_vocab.decode([markers.open(0)]) == eval_tasks.OUTPUT_MARKER_TEXT
  assert eval_tasks.strip_output_marker_text(b"<extra_id_0> what is it ?") == "what is it ?"
  assert eval_tasks.strip_output_marker_text("what is it ?") == "what is it ?"
  assert eval_tasks.strip_output_marker_text("<extra_id_0> q", is_target=True) == "<extra_id_0> q"


def test_squad_qg_in_the_ssr_format(qg_task, small_sotu_vocab):
  markers = formatting.span_markers(small_sotu_vocab)
  with tfds.testing.mock_data(num_examples=2):
    ds = qg_task.get_dataset({"inputs": 24, "targets": 12}, split="test", shuffle=False, try_in_mem_cache=False)
    examples = list(ds.as_numpy_iterator())
  assert len(examples) == 2
  for ex in examples:
    assert ex["inputs_pretokenized"].decode().startswith("generate question: answer: ")
    inputs, targets = ex["inputs"].tolist(), ex["targets"].tolist()
    assert len(inputs) <= 24 and inputs[0] == markers.open(0) and inputs[-2:] == [markers.close(0), 1]
    assert targets[0] == markers.open(0) and targets[-1] == 1
  # The task's metrics on its postprocessed outputs: BLEU-4, METEOR and CIDEr.
  targets = ["what river runs through the city ?", "who built the bridge ?"]
  predictions = [qg_task.postprocess_fn(f"{eval_tasks.OUTPUT_MARKER_TEXT} {t}") for t in targets]
  scores = {k: v for fn in qg_task.metric_fns for k, v in fn(targets, predictions).items()}
  assert scores["meteor"] > 99 and scores["cider"] == pytest.approx(10 * (1 + 1 + 1 + 1) / 4)
  assert max(v for k, v in scores.items() if "bleu" in k) == pytest.approx(100)


def test_apply_edits():
  tokens = "I like apple .".split()
  assert eval_tasks.apply_edits(tokens, [(2, 3, "apple", ("apples",)), (2, 2, "", ("an",))]) == "I like an apples ."
  assert eval_tasks.apply_edits(tokens, [(3, 4, ".", ("",))]) == "I like apple"
  assert eval_tasks.apply_edits(tokens, []) == "I like apple ."


def test_gec_from_m2_files_end_to_end(tmp_path, small_sotu_vocab):
  path = tmp_path / "test.m2"
  path.write_text(M2)
  task = eval_tasks.register_gec_task("ssr_gec_test", {"test": str(path)}, small_sotu_vocab)
  try:
    ds = task.get_dataset({"inputs": 32, "targets": 32}, split="test", shuffle=False, try_in_mem_cache=False)
    examples = list(ds.as_numpy_iterator())
  finally:
    seqio.TaskRegistry.remove("ssr_gec_test")
  markers = formatting.span_markers(small_sotu_vocab)
  assert [ex["inputs_pretokenized"].decode() for ex in examples] == ["He go to school yesterday .", "I like apple ."]
  assert [ex["targets_pretokenized"].decode() for ex in examples] == ["He went to school yesterday .",
                                                                      "I like apples ."]  # the first annotator's
  for ex in examples:
    np.testing.assert_array_equal(ex["inputs"][[0, -2, -1]], [markers.open(0), markers.close(0), 1])
    assert small_sotu_vocab.decode(ex["inputs"][1:-2].tolist()) == ex["inputs_pretokenized"].decode()
  # As seqio.Evaluator scores: targets postprocessed with their example, predictions decoded then postprocessed.
  targets = [task.postprocess_fn(ex["targets_pretokenized"], example=ex, is_target=True) for ex in examples]
  decoded = ["<extra_id_0> He went to school yesterday .", "<extra_id_0> I like an apple ."]
  predictions = [task.postprocess_fn(d) for d in decoded]
  scores = task.metric_fns[0](targets, predictions)
  assert scores == {"m2_precision": 100.0, "m2_recall": 100.0, "m2_f0.5": 100.0}
  half = task.metric_fns[0](targets, ["He goes to the school yesterday .", "I like apples ."])
  assert half == {"m2_precision": 50.0, "m2_recall": 50.0, "m2_f0.5": pytest.approx(50.0)}


def test_gec_task_reads_the_gin_bound_files(tmp_path, small_sotu_vocab):
  import gin
  path = tmp_path / "dev.m2"
  path.write_text(M2)
  task = eval_tasks.register_gec_task(vocab=small_sotu_vocab)
  try:
    with pytest.raises(ValueError, match="bind ssr.eval_tasks.gec_m2_files.validation"):
      task.get_dataset({"inputs": 32, "targets": 32}, split="validation", shuffle=False)
    gin.bind_parameter("ssr.eval_tasks.gec_m2_files.validation", str(path))
    gin.bind_parameter("ssr.eval_tasks.gec_m2_files.test", str(tmp_path / "missing.m2"))
    ds = task.get_dataset({"inputs": 32, "targets": 32}, split="validation", shuffle=False, try_in_mem_cache=False)
    assert [ex["targets_pretokenized"] for ex in ds.as_numpy_iterator()] == [b"He went to school yesterday .",
                                                                           b"I like apples ."]
    with pytest.raises(FileNotFoundError, match="missing.m2"):
      task.get_dataset({"inputs": 32, "targets": 32}, split="test", shuffle=False)
  finally:
    gin.clear_config()
    eval_tasks.register_gec_task()
