"""WebDataset shards, the files a tar job delivers: telling an image that lives in one (its key is the
shard's), and indexing a shard's members in one pass over its headers to read each image's PNG out of it."""

from __future__ import annotations

import io
import tarfile

from scheduler.client.results import Image
from scheduler.errors import ClientError

SHARD_SUFFIX = ".tar"  # tar jobs: an image row's key is the WebDataset shard that holds its PNG


def _in_shard(image: Image) -> bool:
    """True for an image of a tar job: its key is the WebDataset shard that holds it."""
    return bool(image.key and image.key.endswith(SHARD_SUFFIX))


class _Shard:
    """A WebDataset shard's bytes and where each file's data lies in them, from one pass over its headers.

    `TarFile.extractfile(name)` scans every header for each name asked: 1,000 images of a shard cost a million
    header reads, where this costs a thousand and then a dictionary lookup per image."""

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._members: dict[str, tuple[int, int]] = {}  # name -> (offset of its data, size)
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
                for member in archive:
                    if member.isreg() and not member.issparse():
                        self._members[member.name] = (member.offset_data, member.size)
        except tarfile.TarError as exc:
            raise ClientError(f"{what}: not a readable tar shard ({exc})") from exc

    def member(self, index: int) -> bytes:
        """The PNG of image `index` (member `<index:08d>.png`); `ClientError` when the shard has none."""
        name = f"{index:08d}.png"
        offset, size = self._members.get(name, (0, -1))
        if size < 0 or offset + size > len(self._data):
            raise ClientError(f"image {index}: no member {name} in its shard")
        return self._data[offset : offset + size]


def shard_member(shard: bytes, index: int) -> bytes:
    """The PNG of image `index` in a WebDataset shard (member `<index:08d>.png`); `ClientError` if absent."""
    return _Shard(shard, f"image {index}'s shard").member(index)
