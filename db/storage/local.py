"""A local folder as the object store (`file:///path`): the embedded default.

Writes are atomic: the bytes go to a temporary file in the target's own folder, are fsynced, and the file
is renamed over the target with `os.replace`, so a reader sees the old object or the new one, never a torn
one — also when two processes write the same key (re-run chunks write identical bytes anyway).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from db.errors import ObjectNotFoundError, StorageError
from db.storage.base import PUT_FILE_PIECE_BYTES, ObjectInfo, ObjectStore, PresignedUrl
from db.storage.keys import validate_key, validate_prefix
from db.storage.presign import check_expiry

# Temporary files carry this suffix; listings skip them (a key is never expected to end like this).
TEMP_SUFFIX = ".catalogan-tmp"
OBJECT_FILE_MODE = 0o644


def path_from_file_url(url: str) -> Path:
    """The folder a `file:///abs/path` URL names; `file://` must be followed by an absolute path."""
    parts = urlsplit(url)
    if parts.scheme != "file" or parts.netloc not in {"", "localhost"}:
        raise StorageError(f"{url!r}: expected file:///absolute/path")
    path = unquote(parts.path)
    if not path.startswith("/"):
        raise StorageError(f"{url!r}: expected file:///absolute/path")
    return Path(path)


class LocalStore(ObjectStore):
    """Objects as files under a root folder; keys map to relative paths."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        """Write `data` atomically (temp file + fsync + rename) under `key`."""
        self._write(key, lambda handle: handle.write(data))

    def put_file(self, key: str, file: BinaryIO, *, content_type: str = "application/octet-stream") -> None:
        """Copy `file` (from its start) atomically under `key`, `PUT_FILE_PIECE_BYTES` at a time."""
        file.seek(0)
        self._write(key, lambda handle: shutil.copyfileobj(file, handle, PUT_FILE_PIECE_BYTES))

    def _write(self, key: str, write: Callable[[BinaryIO], object]) -> None:
        """Run `write` on a temp file next to `key`'s path, fsync it and rename it into place."""
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        except (FileExistsError, NotADirectoryError) as exc:
            raise StorageError(f"cannot write {self.uri(key)}: a parent of the key is an object") from exc
        except OSError as exc:
            raise StorageError(f"cannot write {self.uri(key)}: {exc}") from exc
        try:
            os.fchmod(fd, OBJECT_FILE_MODE)  # mkstemp creates 0600; objects are as readable as other files
            with os.fdopen(fd, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, path)
        except IsADirectoryError as exc:
            os.unlink(tmp_name)
            raise StorageError(f"cannot write {self.uri(key)}: the key is a prefix of other objects") from exc
        except BaseException as exc:
            Path(tmp_name).unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise StorageError(f"cannot write {self.uri(key)}: {exc}") from exc
            raise

    def get(self, key: str) -> bytes:
        """Return the file's bytes; raise `ObjectNotFoundError` when there is no such object."""
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFoundError(f"no object at {self.uri(key)}") from exc
        except OSError as exc:
            raise StorageError(f"cannot read {self.uri(key)}: {exc}") from exc

    def iter_chunks(self, key: str, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        """Read the file `chunk_bytes` at a time; `ObjectNotFoundError` when there is no such object."""
        path = self._path(key)
        try:
            handle = path.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFoundError(f"no object at {self.uri(key)}") from exc
        except OSError as exc:
            raise StorageError(f"cannot read {self.uri(key)}: {exc}") from exc
        with handle:
            while piece := handle.read(chunk_bytes):
                yield piece

    def exists(self, key: str) -> bool:
        """True when `key` is a file."""
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        """Remove the file; a missing key is not an error. Empty folders are left in place."""
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return
        except IsADirectoryError:
            return  # `key` is only a prefix of other objects: there is no object to delete
        except OSError as exc:
            raise StorageError(f"cannot delete {self.uri(key)}: {exc}") from exc

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield the files under `prefix` in key order."""
        validate_prefix(prefix)
        # Walk only the deepest folder the prefix fully names, then filter by the rest of the prefix.
        folder_part = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root.joinpath(*folder_part.split("/")) if folder_part else self.root
        found: list[ObjectInfo] = []
        for dirpath, _dirnames, filenames in os.walk(start):
            for name in filenames:
                if name.endswith(TEMP_SUFFIX):
                    continue
                full = Path(dirpath, name)
                key = full.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    try:
                        found.append(ObjectInfo(key, full.stat().st_size))
                    except FileNotFoundError:
                        continue  # deleted while we listed
        yield from sorted(found, key=lambda info: info.key)

    def presign(self, key: str, *, expires_in_seconds: int) -> PresignedUrl:
        """The object's `file://` URI; only readers on this machine can use it, and nothing enforces the expiry."""
        path = self._path(key)
        expires_at = check_expiry(expires_in_seconds)
        return PresignedUrl(path.as_uri(), expires_at)
