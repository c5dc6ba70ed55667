"""The command line every entry point shares: t5x-style flags, gin parsing, logging, and user errors.

  main(argv, make_config, run): --gin_file=... (repeatable), --gin.NAME=VALUE, --gin_search_paths=...,
  --coordinator_address/--num_processes/--process_id for multi-process runs, --debug (or SPACTOR_DEBUG=1).

spactor.train, ssr.continual and spactor.finetune start through `main`, so they take the same flags and keep the
same guarantees: a binding that binds nothing the run reads stops the run (with the closest name), a MODEL_DIR is
held by one run at a time (`hold_model_dir`), and bad input (spactor.errors.UsageError) ends in one paragraph
naming the problem, before anything is written, while any other error keeps its traceback. Entry points that do
not parse gin (ssr.generate) use `hold_model_dir` and `usage_errors_reported` directly.
"""
import contextlib
import difflib
import fcntl
import inspect
import logging
import os
import socket
import tokenize
from typing import Any, Callable, Iterator

import gin
import jax

from spactor.errors import UsageError

log = logging.getLogger('spactor.cli')

# Errors that this project's own code raises about its input (their message says what is wrong): one paragraph
# when raised in the project's code. Raised anywhere else (jax, Orbax, TensorFlow) they keep their traceback.
USER_ERRORS = (ValueError, FileNotFoundError)
_PROJECT_DIRS = tuple(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), d) + os.sep
                      for d in ('spactor', 'ssr'))


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
    elif arg == '--debug':
      continue  # read by main (debug_requested)
    elif arg in ('-h', '--help'):
      print(doc or __doc__)
      raise SystemExit(0)
    else:
      raise SystemExit(f'error: unknown flag {arg!r} (expected --gin_file=, --gin.NAME=VALUE, --gin_search_paths=, '
                       f'--coordinator_address=, --num_processes=, --process_id=, --debug)')
  if not files:
    raise SystemExit('error: give at least one --gin_file')
  return files, bindings, search_paths, distributed


def parse_gin(files, bindings, search_paths) -> None:
  repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project's checkout
  # Includes such as 'models/t5_1_0_base.gin' resolve in the project's gin/ (gin tries the paths in order).
  for path in [*search_paths, os.getcwd(), repo_root, os.path.join(repo_root, 'gin')]:
    gin.add_config_file_search_path(path)
  try:
    # Files first (as gin itself orders them): their `import` lines register configurables a binding may name.
    gin.parse_config_files_and_bindings(files, None, finalize_config=False)
    check_parameter_bindings(bindings)
    gin.parse_config_files_and_bindings(None, bindings, finalize_config=False)
  except UsageError:
    raise
  except (ValueError, KeyError, IOError, SyntaxError, tokenize.TokenError) as e:
    text = e.args[0] if isinstance(e, tokenize.TokenError) else str(e)  # its str() is an args tuple
    raise UsageError(f'the gin configuration is not valid: {text} (gin files {files}, bindings {bindings})') from e
  check_macro_bindings(bindings)


# --- bindings that bind nothing -------------------------------------------------------------------------------


def _binding_names(bindings: list[str]) -> list[str]:
  """The left-hand side of each binding line ('TAU', 'spactor.train.TrainConfig.tau', 'scope/Cfg.param')."""
  names = []
  for binding in bindings:
    for line in binding.splitlines():
      line = line.split('#', 1)[0].strip()
      if '=' in line and not line.startswith(('include ', 'import ')):
        names.append(line.split('=', 1)[0].strip())
  return names


def _suggestion(name: str, candidates) -> str:
  close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
  return f'; did you mean {close[0]}?' if close else ''


def _parameter_names(configurable) -> list[str]:
  """The parameters a configurable can be bound with; [] when unknown or when it takes **kwargs (anything goes)."""
  fn = configurable.wrapped
  try:
    parameters = inspect.signature(fn.__init__ if inspect.isclass(fn) else fn).parameters
  except (TypeError, ValueError):
    return []
  if any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
    return []
  return [name for name in parameters if name != 'self']


def check_parameter_bindings(bindings: list[str]) -> None:
  """A parameter binding must name a registered configurable and one of its parameters (checked before gin
  parses, so that the message can offer the closest name)."""
  from gin import config as gin_config  # gin's registry of configurables: no public listing exists
  for name in _binding_names(bindings):
    selector = name.rsplit('/', 1)[-1]
    if '.' not in selector:
      continue  # a macro: checked after parsing, against what reads it
    configurable_name, parameter = selector.rsplit('.', 1)
    try:
      configurable = gin_config._REGISTRY.get_match(configurable_name)  # pylint: disable=protected-access
    except Exception:  # pylint: disable=broad-except  # ambiguous: gin's own message says which
      continue
    if configurable is None:
      known = [selector for selector, _ in gin_config._REGISTRY.items()]  # pylint: disable=protected-access
      raise UsageError(f'--gin.{name} binds {configurable_name}, which is not a gin configurable'
                       f'{_suggestion(configurable_name, known)}')
    parameters = _parameter_names(configurable)
    if parameters and parameter not in parameters:
      raise UsageError(f'--gin.{name}: {configurable.selector} has no parameter {parameter}'
                       f'{_suggestion(parameter, parameters)}')


def _macro_references(value, out: set) -> None:
  if isinstance(value, gin.config.ConfigurableReference):
    if value.configurable.selector == 'gin.macro':
      out.add(value.scoped_selector.rsplit('/', 1)[0])
  elif isinstance(value, dict):
    for v in value.values():
      _macro_references(v, out)
  elif isinstance(value, (list, tuple, set)):
    for v in value:
      _macro_references(v, out)


def check_macro_bindings(bindings: list[str]) -> None:
  """After parsing: every macro bound on the command line must be read by a gin file or binding."""
  from gin import config as gin_config
  referenced, defined = set(), set()
  for (scope, selector), values in gin_config._CONFIG.items():  # pylint: disable=protected-access
    if selector == 'gin.macro':
      defined.add(scope)
    _macro_references(values, referenced)
  for name in _binding_names(bindings):
    if '.' in name or '/' in name or name in referenced:
      continue
    raise UsageError(f'--gin.{name} binds the macro {name}, which no gin file or configurable of this run reads'
                     f'{_suggestion(name, (referenced | defined) - {name})}')


class _DropGinSearchMisses(logging.Filter):
  """gin logs an ERROR for every search path an include is not in, even when a later one has it."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith('Path not found:')


_GIN_SEARCH_MISSES = _DropGinSearchMisses()


def debug_requested(argv: list[str]) -> bool:
  """--debug or SPACTOR_DEBUG=1: full tracebacks for bad input too, and DEBUG logs of spactor and ssr."""
  return '--debug' in argv or os.environ.get('SPACTOR_DEBUG', '') not in ('', '0')


def configure_logging(debug: bool = False) -> None:
  """INFO lines of the project on stderr, even when an imported library configured logging first (force=True)."""
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s', force=True)
  logging.getLogger().addFilter(_GIN_SEARCH_MISSES)
  for noisy in ('absl', 'orbax', 'jax._src', 'tensorflow'):
    logging.getLogger(noisy).setLevel(logging.ERROR)
  for ours in ('spactor', 'ssr'):
    logging.getLogger(ours).setLevel(logging.DEBUG if debug else logging.NOTSET)


def one_paragraph(error: BaseException) -> str:
  return ' '.join(str(error).split())


def is_usage_error(error: BaseException, user_errors: tuple = USER_ERRORS) -> bool:
  """A UsageError, or one of `user_errors` raised by this project's own code (not deep in a library)."""
  if isinstance(error, UsageError):
    return True
  if not isinstance(error, user_errors) or error.__traceback__ is None:
    return False
  frame = error.__traceback__
  while frame.tb_next is not None:
    frame = frame.tb_next
  return os.path.abspath(frame.tb_frame.f_code.co_filename).startswith(_PROJECT_DIRS)


@contextlib.contextmanager
def usage_errors_reported(debug: bool = False, user_errors: tuple = USER_ERRORS) -> Iterator[None]:
  """Bad input ends the command with `error: <one paragraph>` (exit status 1); other errors propagate as they are.

  With `debug` bad input propagates too, with its full traceback.
  """
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    if debug or not is_usage_error(e, user_errors):
      raise
    raise SystemExit(f'error: {one_paragraph(e)}') from None


# --- one run per directory ------------------------------------------------------------------------------------

LOCK_FILE = '.lock'


@contextlib.contextmanager
def hold_model_dir(model_dir: str) -> Iterator[None]:
  """Holds MODEL_DIR for this process's lifetime: a second run in the same directory refuses to start.

  An exclusive `flock` on MODEL_DIR/.lock, which the kernel drops when the process ends in any way (a killed run
  leaves no stale lock). Only process 0 of a multi-process run takes it. Object stores (gs://...) have no locks:
  there the directory is not held and a warning says so.
  """
  if '://' in model_dir:
    log.warning('%s cannot be locked (not a local file system): make sure no other run writes to it', model_dir)
    yield
    return
  if os.path.exists(model_dir) and not os.path.isdir(model_dir):
    raise UsageError(f'MODEL_DIR {model_dir} is a file, not a directory; give a directory (a new one starts a run, '
                     f'an existing one continues it)')
  if jax.process_index() != 0:
    yield
    return
  try:
    os.makedirs(model_dir, exist_ok=True)
    fd = os.open(os.path.join(model_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise UsageError(f'MODEL_DIR {model_dir} cannot be created or written ({e.strerror}: {e.filename})') from e
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 200, 0).decode(errors='replace').strip() or 'unknown'
      raise UsageError(f'MODEL_DIR {model_dir} is in use by another run (process {holder}); wait for it to end or '
                       f'give another MODEL_DIR') from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f'{os.getpid()} on {socket.gethostname()}\n'.encode(), 0)
    yield
  finally:
    os.close(fd)  # closing the descriptor releases the lock


def main(argv: list[str], make_config: Callable[[], Any], run: Callable[[Any], Any],
         user_errors: tuple = USER_ERRORS, doc: str = '',
         model_dir: Callable[[Any], str] = lambda config: config.model_dir) -> Any:
  """Parses the flags and gin, builds the run's config, holds its MODEL_DIR and runs it.

  Bad input ends with `error: ...` in one paragraph before anything is written; `model_dir(config)` names the
  directory the run writes.
  """
  debug = debug_requested(argv)
  configure_logging(debug)
  with usage_errors_reported(debug, user_errors):
    files, bindings, search_paths, distributed = parse_flags(argv, doc)
    if distributed:
      jax.distributed.initialize(**distributed)
    jax.config.update('jax_numpy_rank_promotion', 'raise')
    parse_gin(files, bindings, search_paths)
    try:
      config = make_config()
    except (TypeError, ValueError) as e:  # a gin value of the wrong type or range
      raise UsageError(one_paragraph(e)) from e
    with hold_model_dir(model_dir(config)):
      return run(config)
