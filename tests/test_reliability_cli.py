"""The shared command line (spactor.cli) refuses what is wrong before anything is written, in one paragraph.

A binding that binds nothing the run reads, a MODEL_DIR that is a file or that another run holds: each stops
with a message naming it. Errors that are not the user's input keep their traceback.
"""
import glob
import logging
import os
import re
import signal
import subprocess
import sys

import gin
import pytest

from spactor import cli, finetune, train
from spactor.errors import UsageError
from ssr import continual, generate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def restore_logging_and_gin():
  """cli.main reconfigures the root logger and parses gin; leave both as the test found them."""
  root = logging.getLogger()
  handlers, level = list(root.handlers), root.level
  yield
  root.handlers[:] = handlers
  root.setLevel(level)
  gin.clear_config()


def in_repo(main, argv):
  cwd = os.getcwd()
  try:
    os.chdir(REPO)
    return main(argv)
  finally:
    os.chdir(cwd)
    gin.clear_config()


def train_main(argv):
  return in_repo(train.main, argv)


# Each entry point that trains or writes, started on the directory it writes.
ENTRY_POINTS = {
    'spactor.train': lambda out: (train.main, ['--gin_file=gin/runs/demo.gin', f'--gin.MODEL_DIR={out!r}']),
    'ssr.continual': lambda out: (continual.main, ['--gin_file=gin/ssr/sc_cont.gin', f'--gin.MODEL_DIR={out!r}',
                                                   "--gin.INIT_CHECKPOINT='/no/such/run'"]),
    'ssr.generate': lambda out: (generate.main, ['--checkpoint_dir=/no/such/run', f'--out_dir={out}']),
    'spactor.finetune': lambda out: (finetune.main, ['--gin_file=gin/finetune/rt_polarity.gin',
                                                     f'--gin.MODEL_DIR={out!r}',
                                                     "--gin.INIT_CHECKPOINT='/no/such/run'"]),
}


@pytest.mark.parametrize('binding, message', [
    ('--gin.TAUU=5', 'did you mean TAU?'),  # a macro nothing reads
    ('--gin.spactor.train.TrainConfig.tauu=5', 'did you mean tau?'),  # a parameter that does not exist
    ('--gin.spactor.train.TrainConfg.tau=5', 'did you mean spactor.train.TrainConfig?'),  # no such configurable
])
def test_a_binding_that_binds_nothing_stops_with_a_suggestion_before_anything_is_written(tmp_path, binding,
                                                                                          message):
  model_dir = tmp_path / 'run'
  with pytest.raises(SystemExit) as exit_info:
    train_main(['--gin_file=gin/runs/demo.gin', f'--gin.MODEL_DIR={str(model_dir)!r}', binding])
  text = str(exit_info.value)
  assert message in text and binding.split('=')[0][len('--gin.'):] in text, text
  assert '\n' not in text
  assert not model_dir.exists()


# The shipped gin files as they are run: alone, or an overlay (cpu.gin) after the file it adjusts.
SHIPPED = [(f,) for f in ('gin/runs/pretrain.gin', 'gin/runs/demo.gin', 'gin/ssr/demo_generator.gin',
                          'gin/ssr/demo_student.gin', 'gin/ssr/continual.gin', 'gin/ssr/ssr.gin', 'gin/ssr/sc_cont.gin',
                          'gin/ssr/distill_cont.gin', 'gin/ssr/finetune_gec.gin', 'gin/ssr/finetune_squad_qg.gin',
                          'gin/finetune/finetune.gin', 'gin/finetune/rt_polarity.gin', 'gin/finetune/demo.gin')] + [
    ('gin/runs/pretrain.gin', 'gin/runs/cpu.gin'), ('gin/ssr/ssr.gin', 'gin/ssr/cpu.gin'),
    ('gin/finetune/rt_polarity.gin', 'gin/finetune/cpu.gin')]


def test_the_shipped_gin_files_cover_every_run_file():
  shipped = {f for files in SHIPPED for f in files}
  assert shipped == {os.path.relpath(f, REPO) for d in ('runs', 'ssr', 'finetune')
                     for f in glob.glob(os.path.join(REPO, 'gin', d, '*.gin'))}


@pytest.mark.parametrize('files', SHIPPED, ids='+'.join)
def test_every_macro_a_shipped_gin_file_sets_can_be_overridden_on_the_command_line(monkeypatch, files):
  """No false positive of the unknown-binding check: each macro the last file sets is read by the run."""
  monkeypatch.chdir(REPO)
  with open(files[-1]) as f:
    macros = re.findall(r'^([A-Z][A-Z0-9_]*) = (.*?)(?:\s+#.*)?$', f.read(), re.M) or [('MODEL_DIR', "'run'")]
  for name, value in macros:
    gin.clear_config()
    cli.parse_gin(list(files), [f"{name} = {'None' if 'REQUIRED' in value else value}"], [])


def test_a_binding_may_name_a_configurable_that_a_gin_file_imports(tmp_path, monkeypatch):
  """gin/ssr/finetune_gec.gin imports ssr.eval_tasks; its configurables are known once the files are parsed."""
  module = f'spactor_test_imported_{os.getpid()}'
  (tmp_path / f'{module}.py').write_text('import gin\n\n@gin.configurable\ndef files(path=None):\n  return path\n')
  (tmp_path / 'run.gin').write_text(f'import {module}\n')
  monkeypatch.syspath_prepend(str(tmp_path))
  cli.parse_gin([str(tmp_path / 'run.gin')], [f"{module}.files.path = 'a.m2'"], [])
  assert gin.query_parameter(f'{module}.files.path') == 'a.m2'
  gin.clear_config()
  with pytest.raises(UsageError, match='did you mean path?'):
    cli.parse_gin([str(tmp_path / 'run.gin')], [f"{module}.files.paht = 'a.m2'"], [])


def test_a_macro_typo_stops_ssr_continual_too(tmp_path):
  main, argv = ENTRY_POINTS['ssr.continual'](str(tmp_path / 'run'))
  with pytest.raises(SystemExit, match='did you mean TOTAL_STEPS?'):
    in_repo(main, [*argv, '--gin.TOTAL_STEPZ=5'])
  assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('entry_point', sorted(ENTRY_POINTS))
def test_a_model_dir_that_is_a_file_stops_in_one_paragraph_and_keeps_the_file(tmp_path, entry_point):
  not_a_dir = tmp_path / 'notes.txt'
  not_a_dir.write_text('mine')
  with pytest.raises(SystemExit) as exit_info:
    in_repo(*ENTRY_POINTS[entry_point](str(not_a_dir)))
  text = str(exit_info.value)
  assert 'not a directory' in text and str(not_a_dir) in text and '\n' not in text, text
  assert not_a_dir.read_text() == 'mine'


HOLD = ('import sys, time\nfrom spactor import cli\nwith cli.hold_model_dir(sys.argv[1]):\n'
        '  print("holding", flush=True)\n  time.sleep(120)\n')


def test_a_second_run_in_the_same_model_dir_refuses_to_start_and_a_killed_run_leaves_no_stale_lock(tmp_path):
  first = subprocess.Popen([sys.executable, '-c', HOLD, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
  try:
    assert first.stdout.readline().strip() == 'holding'
    for entry_point in sorted(ENTRY_POINTS):
      with pytest.raises(SystemExit) as exit_info:
        in_repo(*ENTRY_POINTS[entry_point](str(tmp_path)))
      text = str(exit_info.value)
      assert 'in use' in text and str(first.pid) in text and '\n' not in text, (entry_point, text)
      assert sorted(os.listdir(tmp_path)) == ['.lock']  # nothing written by the refused run
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  with cli.hold_model_dir(str(tmp_path)):  # the killed holder's lock went with it
    pass


def test_the_lock_is_held_for_the_run_and_released_after(tmp_path):
  with cli.hold_model_dir(str(tmp_path)):
    with pytest.raises(UsageError, match='in use'):
      with cli.hold_model_dir(str(tmp_path)):
        pass
  with cli.hold_model_dir(str(tmp_path)):
    pass


def test_usage_errors_are_one_paragraph_and_internal_errors_keep_their_traceback(tmp_path):
  argv = ['--gin_file=gin/runs/demo.gin', f'--gin.MODEL_DIR={str(tmp_path / "run")!r}']

  def make_config():
    return train.TrainConfig()

  def bad_input(config):
    raise UsageError('the corpus is empty\n(see the log)')

  def internal(config):
    raise RuntimeError('a bug')

  cwd = os.getcwd()
  os.chdir(REPO)
  try:
    with pytest.raises(SystemExit, match=r'^error: the corpus is empty \(see the log\)$'):
      cli.main(argv, make_config, bad_input)
    gin.clear_config()
    with pytest.raises(RuntimeError, match='a bug'):
      cli.main(argv, make_config, internal)
    gin.clear_config()
    with pytest.raises(UsageError):  # --debug: the full traceback of bad input too
      cli.main(['--debug', *argv], make_config, bad_input)
  finally:
    os.chdir(cwd)


def test_logging_set_up_by_a_library_first_does_not_hide_the_trainers_info_lines(capfd):
  root = logging.getLogger()
  root.addHandler(logging.NullHandler())  # as absl or TensorFlow leave it: a handler, level WARNING
  root.setLevel(logging.WARNING)
  cli.configure_logging()
  logging.getLogger('spactor.train').info('restored step 7 (hybrid stage)')
  assert 'restored step 7' in capfd.readouterr().err
