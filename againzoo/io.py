"""Atomic file writes, atomic directory replacement and pickle-free state files.

Every file is written to a temporary name in the same directory, flushed, fsynced and renamed
over the target, so a kill at any moment leaves either the old or the new file, never a torn one.
A directory of files that belong together (a checkpoint: weights + config) is written complete into
a temporary sibling and swapped in (:func:`replace_dir`): Linux's ``renameat2(RENAME_EXCHANGE)``
exchanges the two in one step, elsewhere two renames leave the name absent for an instant, never
half-written. A full disk or a missing permission is a one-line :class:`OutputError`.
Training state (optimiser, RNG streams, counters) is stored as one safetensors file whose
metadata carries the non-tensor part as JSON: nothing is ever unpickled.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from .errors import CheckpointError, OutputError


def writable_dir(folder: str | Path) -> Path:
    """Create ``folder`` (and parents) for output, or raise a one-line :class:`OutputError`."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot write into {folder}: {e.strerror or e}") from None
    if not os.access(folder, os.W_OK):
        raise OutputError(f"cannot write into {folder}: permission denied")
    return folder


def output_error(path: str | Path, e: OSError) -> OutputError:
    """A one-line error for a failed write (a full disk says so)."""
    if e.errno == errno.ENOSPC:
        return OutputError(f"no space left on the device writing {path}: free some space; the previous complete "
                           f"file (or checkpoint) is intact")
    if isinstance(e, IsADirectoryError):
        return OutputError(f"cannot write {path}: it is a directory (expected a file path)")
    return OutputError(f"cannot write {path}: {e.strerror or e}")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then atomically rename ``tmp_path`` to ``path``."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a directory (expected a file path)")
    writable_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise output_error(path, e) from None
    os.close(fd)
    os.chmod(tmp, 0o644)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise output_error(path, e) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def check_replace(path: str | Path, ours: Callable[[Path], bool], what: str, overwrite: bool = False) -> Path:
    """Before writing ``path``: a directory in the way, or an existing file that is not ``what``
    (``ours(path)`` says whether it is), is refused with one line unless ``overwrite``."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a directory (expected the path of {what})")
    if path.exists() and not overwrite:
        try:
            mine = ours(path)
        except (OSError, ValueError, UnicodeDecodeError):
            mine = False
        if not mine:
            raise OutputError(f"{path} exists and is not {what}: refusing to replace it (pass --overwrite, "
                              f"or choose another path)")
    return path


TMP_DIR, OLD_DIR = ".tmp-", ".old-"


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0


def replace_dir(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write a directory as one unit: ``write(tmp_dir)`` fills a temporary sibling, which then
    replaces ``path`` (the previous directory stays whole until the new one is)."""
    path = Path(path)
    writable_dir(path.parent)
    tmp = path.parent / f".{path.name}{TMP_DIR}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        write(tmp)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if not path.exists():
            os.rename(tmp, path)
        elif _exchange(tmp, path):
            shutil.rmtree(tmp)  # now the previous directory
        else:
            old = path.parent / f".{path.name}{OLD_DIR}{os.getpid()}"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as e:
        raise output_error(path, e) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete what interrupted writes left in ``folder`` and its sub-folders (``.*.tmp`` files,
    ``.<name>.tmp-<pid>`` / ``.<name>.old-<pid>`` directories); return what was removed. A
    directory whose swap was interrupted after the first of two renames is put back first."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in sorted(folder.rglob(".*")):
        name = p.name
        if p.is_dir() and (TMP_DIR in name or OLD_DIR in name):
            target = p.parent / name[1:].rsplit(OLD_DIR if OLD_DIR in name else TMP_DIR, 1)[0]
            if OLD_DIR in name and not target.exists():
                os.rename(p, target)  # the swap stopped between its renames: the old one is the complete one
                continue
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
        elif p.is_file() and name.endswith(".tmp"):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors' ``save_file``, with its I/O failures (a full disk) raised as ``OSError``, which the
    atomic writers turn into one line (:func:`output_error`)."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as e:
        text = str(e)
        full = "No space left" in text or "os error 28" in text
        raise OSError(errno.ENOSPC if full else errno.EIO, text.splitlines()[0] if text else "write failed") from None


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Atomically write a safetensors file (tensors made contiguous and moved to CPU)."""
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda p: write_safetensors(flat, p, metadata))


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file and its metadata; a truncated or corrupted file is a CheckpointError."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return load_file(str(path), device=str(device)), meta
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupted?): {e}") from e


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line and fsync it."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read JSON lines, skipping a torn last line (a kill mid-write)."""
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
