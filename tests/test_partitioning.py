"""Tests of spactor.partitioning: the rule table, meshes, and sharded init on emulated devices."""
import json
import os
import subprocess
import sys
import textwrap

import flax
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import pytest

from spactor import config as config_lib
from spactor import model as model_lib
from spactor import partitioning

# The logical names t5x's adafactor.standard_logical_factor_rules() knows (t5x raises KeyError for others).
T5X_FACTOR_RULE_NAMES = {'vocab', 'embed', 'mlp', 'heads', 'kv', 'joined_kv', 'relpos_buckets', 'layers', 'stack',
                         'q_wi_fused', 'o_wo_fused', 'multiquery_heads', 'kv_fused', 'layer_norm_scale',
                         'mlp_activations'}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_abstract_variables():
  t5, gen, rtd = config_lib.preset('tiny', 't5_1_1', vocab_size=256)
  model = model_lib.SpacTor(t5, gen, rtd)
  tokens = jnp.ones((2, 8), jnp.int32)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, tokens, tokens,
                                           method=model_lib.SpacTor.init_all))


def test_rule_table_maps_each_name_once_onto_the_mesh_axes():
  names = [name for name, _ in partitioning.LOGICAL_AXIS_RULES]
  assert len(names) == len(set(names))
  assert set(names) == partitioning.PARAM_AXIS_NAMES | partitioning.ACTIVATION_AXIS_NAMES
  assert {axis for _, axis in partitioning.LOGICAL_AXIS_RULES} <= set(partitioning.MESH_AXES) | {None}
  assert partitioning.PARAM_AXIS_NAMES <= T5X_FACTOR_RULE_NAMES
  assert not partitioning.ACTIVATION_AXIS_NAMES & partitioning.PARAM_AXIS_NAMES


def test_make_mesh_on_one_device():
  mesh = partitioning.make_mesh()
  assert dict(mesh.shape) == {'data': 1, 'model': 1}
  with pytest.raises(ValueError, match='divide'):
    partitioning.make_mesh(num_partitions=2, devices=jax.devices()[:1])
  with pytest.raises(ValueError, match='divide'):
    partitioning.make_mesh(num_partitions=0)


def test_param_shardings_follow_the_rules():
  variables = tiny_abstract_variables()
  shardings = partitioning.param_shardings(variables['params_axes'], partitioning.make_mesh())
  assert jax.tree_util.tree_structure(shardings) == jax.tree_util.tree_structure(variables['params'])
  flat = {'/'.join(k): v.spec for k, v in flax.traverse_util.flatten_dict(shardings).items()}
  assert flat['token_embedder/embedding'] == P('model', None)  # vocab sharded: Megatron-style
  assert flat['encoder/layers_0/attention/query/kernel'] == P(None, 'model')
  assert flat['encoder/layers_0/attention/out/kernel'] == P('model', None)
  assert flat['decoder/layers_0/mlp/wi_0/kernel'] == P(None, 'model')
  assert flat['decoder/relpos_bias/rel_embedding'] == P('model', None)
  assert flat['encoder/encoder_norm/scale'] == P(None)
  assert flat['logits_dense/kernel'] == P(None, 'model')
  assert flat['rtd_head/output_kernel'] == P('model')


_EMULATED_DEVICES_SCRIPT = textwrap.dedent('''
    import json
    import flax, jax, jax.numpy as jnp, numpy as np
    from spactor import config as config_lib, model as model_lib, partitioning

    jax.config.update('jax_numpy_rank_promotion', 'raise')
    result = {'devices': len(jax.devices())}
    try:
      partitioning.make_mesh(3)
    except ValueError:
      result['refused_3_partitions'] = True
    mesh = partitioning.make_mesh(num_partitions=2)
    result['mesh'] = dict(mesh.shape)

    t5, gen, rtd = config_lib.preset('tiny', 't5_1_1', vocab_size=256)
    model = model_lib.SpacTor(t5, gen, rtd)
    rng = np.random.default_rng(0)
    enc = jnp.asarray(rng.integers(1, 256, (4, 16)), jnp.int32)
    dec = jnp.asarray(rng.integers(1, 256, (4, 8)), jnp.int32)
    init = lambda key: model.init(key, enc, dec, dec, method=model_lib.SpacTor.init_all)
    variables, _ = partitioning.sharded_init(init, mesh, jax.random.PRNGKey(0))
    params = flax.traverse_util.flatten_dict(variables['params'])
    result['shard_shapes'] = {'/'.join(k): [list(s.data.shape) for s in v.addressable_shards][:2]
                              for k, v in params.items()
                              if k[-1] in ('embedding', 'rel_embedding') or k[-2:] == ('query', 'kernel')}
    result['all_finite'] = bool(jax.jit(lambda p: jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in p])))(
        list(params.values())))

    forward = lambda v, e, d: model.apply(v, e, d, d, enable_dropout=False, method=model_lib.SpacTor.init_all)
    with partitioning.logical_context(mesh):
      batch = jax.device_put((enc, dec), partitioning.batch_sharding(mesh))
      sharded = jax.jit(forward)(variables, *batch)
    result['out_specs'] = {k: list(v.sharding.spec) for k, v in sharded.items()}
    single = jax.jit(forward)(jax.device_get(variables), enc, dec)
    result['max_diff'] = max(float(jnp.max(jnp.abs(sharded[k] - single[k]))) for k in single)
    print('RESULT' + json.dumps(result))
''')


def test_sharded_init_and_forward_on_four_emulated_devices():
  # Backend optimisation off: the same programs, compiled in about half the CPU time.
  xla_flags = '--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0'
  env = dict(os.environ, XLA_FLAGS=xla_flags, JAX_PLATFORMS='cpu',
             PYTHONPATH=os.pathsep.join([REPO, os.environ.get('PYTHONPATH', '')]))
  proc = subprocess.run([sys.executable, '-c', _EMULATED_DEVICES_SCRIPT], env=env, cwd=REPO, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.split('RESULT', 1)[1])
  assert result['devices'] == 4 and result['refused_3_partitions']
  assert result['mesh'] == {'data': 2, 'model': 2}
  shards = result['shard_shapes']
  assert shards['token_embedder/embedding'] == [[128, 128]] * 2  # [256, 128] split over 'model'
  assert shards['encoder/layers_0/attention/query/kernel'] == [[128, 64]] * 2  # joined_kv over 'model'
  assert shards['encoder/relpos_bias/rel_embedding'] == [[2, 32]] * 2  # heads over 'model'
  assert result['all_finite']
  # The model's logical constraints reach the outputs: batch over 'data', vocabulary over 'model'.
  assert result['out_specs'] == {'logits': ['data', None, 'model'], 'generator_logits': ['data', None, 'model'],
                                 'rtd_logits': ['data']}
  assert result['max_diff'] < 1e-4
