"""The pre-training input: SeqIO's hybrid task, sharded per process, as global batches (TensorFlow lives here).

Every batch holds the hybrid task's features (SpacTorFeatureConverter), so the stream goes on unbroken across the
switch at τ; stage 2 reads its span-corruption view (spactor.stages.clean_batch).
"""
import gin
import jax
import seqio
import tensorflow as tf

from spactor import feature_converters, preprocessors, tasks, trainer


def task_lengths(inputs_length: int, targets_length: int) -> dict[str, int]:
  return {'inputs': inputs_length, 'targets': targets_length, 'inputs_clean': inputs_length,
          'mlm_mask': inputs_length}


def check_preprocessor_settings(config: trainer.TrainConfig) -> None:
  """The preprocessors' gin bindings must agree with the run config, which sizes the step's arrays."""
  span = gin.get_bindings(preprocessors.span_corruption)
  bound = {'NOISE_DENSITY': (span.get('noise_density', preprocessors.DEFAULT_NOISE_DENSITY), config.noise_density),
           'MEAN_NOISE_SPAN_LENGTH': (span.get('mean_noise_span_length', preprocessors.DEFAULT_MEAN_NOISE_SPAN_LENGTH),
                                      config.mean_noise_span_length),
           'MLM_RATIO': (gin.get_bindings(preprocessors.mlm_mask).get('mlm_ratio', preprocessors.DEFAULT_MLM_RATIO),
                         config.mlm_ratio)}
  differ = {name: values for name, values in bound.items() if values[0] != values[1]}
  if differ:
    raise ValueError('the data preprocessors and spactor.train.TrainConfig disagree on ' + ', '.join(
        f'{name} (preprocessor {data!r}, TrainConfig {run!r})' for name, (data, run) in differ.items()) +
        '; bind the macro (e.g. --gin.MLM_RATIO=0.2), not one of its uses')


def process_shards(config: trainer.TrainConfig) -> tuple[range, int]:
  """The data shards this process reads, and how many there are in all.

  Shards, not processes, fix the data order: with data_shards set, a run gives the same global batches on any
  number of processes that divides it (and can be resumed on another number of hosts).
  """
  num_shards = config.data_shards or jax.process_count()
  if num_shards % jax.process_count() or config.batch_size % num_shards:
    raise ValueError(f'data_shards={num_shards} must be a multiple of the {jax.process_count()} processes and '
                     f'divide BATCH_SIZE={config.batch_size}')
  per_process = num_shards // jax.process_count()
  return range(jax.process_index() * per_process, (jax.process_index() + 1) * per_process), num_shards


def make_dataset(config: trainer.TrainConfig, split: str, shuffle: bool, num_epochs=None) -> tf.data.Dataset:
  """This process's rows of every global batch: batch_size / data_shards rows from each of its shards."""
  shard_ids, num_shards = process_shards(config)
  parts = [seqio.get_dataset(
      tasks.hybrid_task_name(config.corpus),
      task_feature_lengths=task_lengths(config.inputs_length, config.targets_length),
      dataset_split=split, shuffle=shuffle, num_epochs=num_epochs, seed=config.seed,
      shard_info=seqio.ShardInfo(index, num_shards),
      feature_converter=feature_converters.SpacTorFeatureConverter(pack=False),
      use_cached=False).batch(config.batch_size // num_shards, drop_remainder=True) for index in shard_ids]
  if len(parts) > 1:
    parts = [tf.data.Dataset.zip(tuple(parts)).map(
        lambda *batches: {k: tf.concat([b[k] for b in batches], axis=0) for k in batches[0]})]
  return parts[0].prefetch(2)


def to_global(batch: dict[str, tf.Tensor], sharding) -> dict[str, jax.Array]:
  return trainer.to_global(jax.tree.map(lambda t: t.numpy(), batch), sharding)


def batch_reader(iterator, sharding):
  """next_batch() for the train loop: the iterator's next batch as global arrays."""
  def next_batch():
    try:
      batch = next(iterator)
    except StopIteration:
      raise ValueError('the training data produced no batch: the corpus is empty or every document was '
                       'skipped (see the log for counts)') from None
    return to_global(batch, sharding)
  return next_batch


def validation_batches(config: trainer.TrainConfig, sharding):
  """The first eval_batches global batches of the validation split (the same ones at every evaluation)."""
  for batch in make_dataset(config, 'validation', shuffle=False, num_epochs=1).take(config.eval_batches):
    yield to_global(batch, sharding)
