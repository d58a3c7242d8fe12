"""Files the library reads and writes: the errors of dataset folders and
image files (here, not in `keras_parnet.data`, so that a tool can name them
without starting TensorFlow), output folders checked before any slow work,
and writes that leave an earlier file intact when they fail part way."""

import errno
import os
import shutil
from pathlib import Path


class DatasetError(ValueError):
    """A dataset folder that does not have the `flow_from_directory` layout."""


class ImageError(ValueError):
    """A file that is not a readable image."""


class OutputError(ValueError):
    """An output path that cannot be written."""


def describe_os_error(error):
    """One line for an `OSError` met while reading or writing: the path, what
    went wrong and what to do."""
    path = error.filename or "a file"
    if error.errno == errno.ENOSPC:
        return f"no space left on the device of {path}: free some space or write somewhere else."
    if error.errno == errno.EDQUOT:
        return f"disk quota exceeded writing {path}: free some space or write somewhere else."
    if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write {path}: {error.strerror.lower()}; choose a writable folder."
    if error.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        return f"{path}: {error.strerror.lower()}: a file and a folder share this path; choose another."
    return f"{path}: {error.strerror or error}"


def output_dir(path, flag):
    """Creates folder `path` if needed and checks that files can be written
    in it; `flag` names the option that chose it (e.g. `--logs-dir`).

    Raises:
        OutputError: the path is a file, or the folder cannot be created or
            written (read-only, no permission, full disk).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path} is a file, not a folder: pass a folder.")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        try:
            with open(probe, "wb") as f:
                f.write(b"\0" * 4096)  # a full disk refuses data, not always an empty file
                f.flush()
                os.fsync(f.fileno())
        finally:
            probe.unlink(missing_ok=True)
    except OSError as error:
        if error.errno == errno.ENOTDIR:
            raise OutputError(f"{flag} {path}: a parent of this folder is a file: pass a folder.") from None
        error.filename = "this folder"  # not the probe file in it
        raise OutputError(f"{flag} {path}: {describe_os_error(error)}") from None
    return path


def write_atomically(path, write):
    """Calls `write(temporary_path)`, then renames the temporary file (or
    folder, e.g. a SavedModel) to `path`: a full disk or a kill part way
    leaves any earlier `path` intact.

    The temporary name ends like `path` (`.png`, `.weights.h5`), since
    writers pick the format from it. An `OSError` that names no file (a
    writer's failed `write` or `close`) is given `path`, for its message.
    """
    path = Path(path)
    temporary = path.with_name(f".partial-{path.name}")
    try:
        write(temporary)
        if temporary.is_dir() and path.is_dir():
            # A folder cannot be renamed over a non-empty one: the old one goes last.
            previous = path.with_name(f".previous-{path.name}")
            _remove(previous)
            os.replace(path, previous)
            os.replace(temporary, path)
            _remove(previous)
        else:
            os.replace(temporary, path)
    except BaseException as error:
        _remove(temporary)
        if isinstance(error, OSError) and error.filename in (None, str(temporary)):
            error.filename = str(path)
        raise
    return path


def _remove(path):
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
