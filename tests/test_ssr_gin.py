"""Every gin file of gin/ssr parses into its config, with the paper's settings and the CPU override."""
import gin
import pytest
import seqio

from spactor import config as config_lib
from spactor import cli, train
from ssr import continual

REQUIRED = ['MODEL_DIR = "/tmp/unused"', 'INIT_CHECKPOINT = "/tmp/start"', 'DATA_DIR = "/tmp/data"']


@pytest.fixture
def parse(monkeypatch):
  monkeypatch.chdir(continual.os.path.dirname(continual.os.path.dirname(continual.__file__)))

  def _parse(files, bindings=()):
    cli.parse_gin(files, [*REQUIRED, *bindings], [])
    return continual.ContinualConfig()
  yield _parse
  gin.clear_config()


def test_ssr_at_the_papers_settings(parse):
  config = parse(["gin/ssr/ssr.gin"])
  assert (config.objective, config.curriculum, config.num_groups) == ("ssr", "loss_length", 5)
  assert (config.inputs_length, config.batch_size, config.total_steps) == (256, 512, 100_000)
  assert (config.learning_rate, config.warmup_steps, config.optimizer, config.corpus) == (5e-5, 8000, "adamw", "c4")
  assert config_lib.preset().t5.emb_dim == 768  # T5-base
  schedule = continual.learning_rate_schedule(config)
  assert schedule(0) == 0 and abs(schedule(4000) - 2.5e-5) < 1e-12 and abs(schedule(8000) - 5e-5) < 1e-12
  assert schedule(100_000) == 0


@pytest.mark.parametrize("objective_file, objective", [("gin/ssr/ssr.gin", "ssr"), ("gin/ssr/sc_cont.gin", "sc")])
def test_cpu_override(parse, objective_file, objective):
  config = parse([objective_file, "gin/ssr/cpu.gin"])
  assert config.objective == objective
  assert (config.corpus, config.inputs_length, config.batch_size) == ("sotu", 128, 16)
  assert config_lib.preset().t5.emb_dim == 128  # tiny


def test_curriculum_knobs(parse):
  config = parse(["gin/ssr/ssr.gin", "gin/ssr/cpu.gin"], ["CURRICULUM = 'anti'", "CURRICULUM_SWITCH = 0.2"])
  assert (config.curriculum, config.curriculum_switch, config.curriculum_on_repeat) == ("anti", 0.2, "warn")


def test_distill_baseline(parse):
  config = parse(["gin/ssr/distill_cont.gin", "gin/ssr/cpu.gin"])
  assert (config.objective, config.batch_size, config.corpus) == ("distill", 16, "sotu")


def _demo_pretraining(gin_file):
  """(TrainConfig, T5Config) of one of the demo's pre-training gin files."""
  try:
    cli.parse_gin([gin_file], ['MODEL_DIR = "/tmp/unused"'], [])
    return train.TrainConfig(), config_lib.preset().t5
  finally:
    gin.clear_config()


def test_demo_student_is_smaller_than_its_generator(monkeypatch):
  monkeypatch.chdir(continual.os.path.dirname(continual.os.path.dirname(continual.__file__)))
  generator_run, generator = _demo_pretraining("gin/ssr/demo_generator.gin")
  student_run, student = _demo_pretraining("gin/ssr/demo_student.gin")
  for run in (generator_run, student_run):
    assert (run.tau, run.corpus, run.inputs_length) == (0, "sotu", 128)  # span corruption on the embedded corpus
  assert (generator.emb_dim, student.emb_dim) == (128, 64)  # tiny and micro
  assert student.mlp_dim < generator.mlp_dim and student.num_heads < generator.num_heads


@pytest.mark.parametrize("gin_file, task", [("gin/ssr/finetune_squad_qg.gin", "ssr_squad_qg"),
                                            ("gin/ssr/finetune_gec.gin", "ssr_gec")])
def test_ssr_format_finetuning_gin(monkeypatch, gin_file, task):
  from spactor import finetune
  from ssr import eval_tasks
  monkeypatch.chdir(continual.os.path.dirname(continual.os.path.dirname(continual.__file__)))
  try:
    gec = ['GEC_TRAIN = "a.m2"', 'GEC_VALIDATION = "b.m2"'] if task == "ssr_gec" else []
    cli.parse_gin([gin_file], ['MODEL_DIR = "/tmp/unused"', "INIT_CHECKPOINT = None", *gec], [])
    config = finetune.FinetuneConfig()
    assert config.task == task and task in seqio.TaskRegistry.names()
    assert config.batch_size == 128 and config.learning_rate == 1e-3  # the project's fine-tuning settings
    if task == "ssr_gec":
      assert eval_tasks.gec_m2_files() == {"train": "a.m2", "validation": "b.m2", "test": None}
  finally:
    gin.clear_config()
