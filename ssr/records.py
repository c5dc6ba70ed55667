"""The generated SSR dataset on disk: sharded TFRecord files of tf.train.Example.

Layout of a data directory:
  generate_config.json                 the settings the data was made with (checked on resume)
  {split}-00000.tfrecord, ...          finished shards; a shard exists only once complete (tmp + atomic rename)
  curriculum-{split}-{mode}-k{k}.json  cached group boundaries (ssr.curriculum)

Each record: `inputs`, `targets` (int64 lists, without EOS: the task appends it), `id` (global example index),
`num_spans`, `truth_length` (masked tokens), `imperfect_length` (generated span tokens), `generator_loss` (the
generator's summed negative log-likelihood of the tokens it sampled: span tokens and the structural tokens it
chose), `sampled_tokens` (how many tokens that sum counts; -1 in data written before it was recorded).
"""
import os
import re

import numpy as np
import tensorflow as tf

SCALARS = {
    "id": tf.int64,
    "num_spans": tf.int64,
    "truth_length": tf.int64,
    "imperfect_length": tf.int64,
    "generator_loss": tf.float32,
    "sampled_tokens": tf.int64,
}
OPTIONAL_SCALARS = {"sampled_tokens": -1}  # name: value read where a record lacks it (older data)
SEQUENCES = ("inputs", "targets")


def feature_spec(with_sequences=True):
  spec = {name: tf.io.FixedLenFeature([], dtype, default_value=OPTIONAL_SCALARS.get(name))
          for name, dtype in SCALARS.items()}
  if with_sequences:
    spec.update({name: tf.io.VarLenFeature(tf.int64) for name in SEQUENCES})
  return spec


def encode(example: dict) -> bytes:
  """Serializes one example (numpy values) as a tf.train.Example."""
  feature = {}
  for name in SEQUENCES:
    feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=np.asarray(example[name]).tolist()))
  for name, dtype in SCALARS.items():
    if name in OPTIONAL_SCALARS and name not in example:
      continue
    value = example[name]
    if dtype == tf.float32:
      feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[float(value)]))
    else:
      feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


def parse(serialized, with_sequences=True):
  """Parses a scalar or batch of serialized examples; sequences come back dense int32."""
  if serialized.shape.rank == 0:
    parsed = tf.io.parse_single_example(serialized, feature_spec(with_sequences))
  else:
    parsed = tf.io.parse_example(serialized, feature_spec(with_sequences))
  out = {}
  for name, value in parsed.items():
    if isinstance(value, tf.sparse.SparseTensor):
      value = tf.sparse.to_dense(value)
    out[name] = tf.cast(value, tf.int32) if value.dtype == tf.int64 else value
  return out


def shard_path(data_dir, split, index):
  return os.path.join(data_dir, f"{split}-{index:05d}.tfrecord")


def list_shards(data_dir, split):
  """Finished shards of a split, in index order."""
  pattern = re.compile(rf"^{re.escape(split)}-(\d{{5}})\.tfrecord$")
  names = [n for n in tf.io.gfile.listdir(data_dir) if pattern.match(n)] if tf.io.gfile.isdir(data_dir) else []
  return [os.path.join(data_dir, n) for n in sorted(names)]


def write_shard(path, serialized_examples):
  """Writes a shard so that it appears complete or not at all: a temporary file, then an atomic rename.

  Temporary files left by an earlier, stopped attempt at the same shard are removed first.
  """
  for stale in tf.io.gfile.glob(f"{path}.tmp-*"):
    tf.io.gfile.remove(stale)
  tmp = f"{path}.tmp-{os.getpid()}"
  with tf.io.TFRecordWriter(tmp) as writer:
    for record in serialized_examples:
      writer.write(record)
  tf.io.gfile.rename(tmp, path, overwrite=True)


def write_json_atomic(path, text):
  tmp = f"{path}.tmp-{os.getpid()}"
  with tf.io.gfile.GFile(tmp, "w") as f:
    f.write(text)
  tf.io.gfile.rename(tmp, path, overwrite=True)
