"""The command line every entry point shares: t5x-style flags, gin parsing, logging, and user errors.

  main(argv, make_config, run): --gin_file=... (repeatable), --gin.NAME=VALUE, --gin_search_paths=...,
  --coordinator_address/--num_processes/--process_id for multi-process runs.

spactor.train, ssr.continual and spactor.finetune start through `main`, so they take the same flags and report
bad input the same way: one paragraph naming the problem, before anything is written.
"""
import logging
import os
import tokenize
from typing import Any, Callable

import gin
import jax

log = logging.getLogger('spactor.cli')

# Errors that name a user's input (their message says what is wrong); anything else keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError)


def parse_flags(argv: list[str], doc: str = '') -> tuple[list[str], list[str], list[str], dict[str, Any]]:
  """Reads t5x-style flags: --gin_file (repeatable), --gin.NAME=VALUE, --gin_search_paths, multi-process flags."""
  files, bindings, search_paths, distributed = [], [], [], {}
  for arg in argv:
    if arg.startswith('--gin_file='):
      files.append(arg.split('=', 1)[1])
    elif arg.startswith('--gin.'):
      name, _, value = arg[len('--gin.'):].partition('=')
      if not value:
        raise SystemExit(f'error: --gin.{name} needs a value: --gin.{name}=VALUE')
      bindings.append(f'{name} = {value}')
    elif arg.startswith('--gin_bindings='):
      bindings.append(arg.split('=', 1)[1])
    elif arg.startswith('--gin_search_paths='):
      search_paths.extend(p for p in arg.split('=', 1)[1].split(',') if p)
    elif arg.split('=', 1)[0] in ('--coordinator_address', '--num_processes', '--process_id'):
      key, value = arg[2:].split('=', 1)
      distributed[key] = value if key == 'coordinator_address' else int(value)
    elif arg in ('-h', '--help'):
      print(doc or __doc__)
      raise SystemExit(0)
    else:
      raise SystemExit(f'error: unknown flag {arg!r} (expected --gin_file=, --gin.NAME=VALUE, --gin_search_paths=, '
                       f'--coordinator_address=, --num_processes=, --process_id=)')
  if not files:
    raise SystemExit('error: give at least one --gin_file')
  return files, bindings, search_paths, distributed


def parse_gin(files, bindings, search_paths) -> None:
  repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project's checkout
  # Includes such as 'models/t5_1_0_base.gin' resolve in the project's gin/ (gin tries the paths in order).
  for path in [*search_paths, os.getcwd(), repo_root, os.path.join(repo_root, 'gin')]:
    gin.add_config_file_search_path(path)
  try:
    gin.parse_config_files_and_bindings(files, bindings, finalize_config=False)
  except (ValueError, KeyError, IOError, SyntaxError, tokenize.TokenError) as e:
    text = e.args[0] if isinstance(e, tokenize.TokenError) else str(e)  # its str() is an args tuple
    raise SystemExit(f'error in the gin configuration: {text} (gin files {files}, bindings {bindings})') from None


class _DropGinSearchMisses(logging.Filter):
  """gin logs an ERROR for every search path an include is not in, even when a later one has it."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith('Path not found:')


def configure_logging() -> None:
  logging.getLogger().addFilter(_DropGinSearchMisses())
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s')
  for noisy in ('absl', 'orbax', 'jax._src', 'tensorflow'):
    logging.getLogger(noisy).setLevel(logging.ERROR)


def main(argv: list[str], make_config: Callable[[], Any], run: Callable[[Any], Any],
         user_errors: tuple = USER_ERRORS, doc: str = '') -> Any:
  """Parses the flags and gin, builds the run's config and runs it; bad input ends with `error: ...`."""
  configure_logging()
  files, bindings, search_paths, distributed = parse_flags(argv, doc)
  if distributed:
    jax.distributed.initialize(**distributed)
  jax.config.update('jax_numpy_rank_promotion', 'raise')
  parse_gin(files, bindings, search_paths)
  try:
    config = make_config()
  except (TypeError, ValueError) as e:
    raise SystemExit(f'error: {e}') from None
  try:
    return run(config)
  except user_errors as e:  # bad input, named by the message
    log.debug('the run stopped', exc_info=True)
    raise SystemExit(f'error: {e}') from None
