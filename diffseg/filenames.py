r"""Local file names for untrusted ids: an id is a value, never a path.

Image ids come from the data (tar member names, Parquet id columns, file names) and may hold anything:
`..`, absolute paths, backslashes, NUL and control characters, markup, thousands of characters.
`safe_path` maps an id to a relative POSIX path that stays inside any folder it is joined to, is the same
on every run, and differs between different ids. `FileNames` hands such paths out inside one folder and
renames, visibly, when two ids would still share a file.

The mapping, `safe_path(image_id)`:

- '/' separates folders: each part of the id between slashes becomes one path component.
- In a component, letters and digits (of any script), space, '.', '_' and '-' are kept; every other
  character ('%', '~', '\', '#', NUL, control characters, ...) becomes '%XX', one per UTF-8 byte. So
  `a\b` is `a%5Cb` and `a%2Fb` is `a%252Fb`, both apart from `a/b`, and the separator is only ever '/'.
- The components '.' and '..' become '%2E' and '%2E%2E'; an empty component (from a leading, doubled or
  trailing '/') becomes '%' alone, which no escaped text can be.
- A component longer than `COMPONENT_BYTES` bytes is cut, and ends in '~' and 16 hex digits of the
  SHA-256 of the whole part; a path longer than `PATH_BYTES` bytes becomes a single such component (its
  '/' escaped too). Every name then fits the common 255-byte limit with room for a suffix.

Examples::

    img-000.jpg                   img-000.jpg
    shard.tar/../../../x.png      shard.tar/%2E%2E/%2E%2E/%2E%2E/x.png
    /etc/passwd                   %/etc/passwd
    a\..\..\b                     a%5C..%5C..%5Cb
    data.parquet#12               data.parquet%2312
    café <1>.jpg                  café %3C1%3E.jpg
"""

from __future__ import annotations

import hashlib
import unicodedata
from pathlib import Path

COMPONENT_BYTES = 200
"""Longest component `safe_path` makes, in UTF-8 bytes: 55 bytes under the usual 255-byte limit, for a
suffix such as `.overlay.png` and a `~N` from `FileNames`."""
PATH_BYTES = 1024
"""Longest path `safe_path` makes, in UTF-8 bytes (well under the usual 4,096-byte limit of a whole path)."""

_KEPT = frozenset(" ._-")
_SPECIAL = {"": "%", ".": "%2E", "..": "%2E%2E"}
_DIGEST = 16
"""Hex digits of SHA-256 ending a cut name (64 bits)."""


def safe_path(image_id: str) -> str:
    """The relative POSIX path of `image_id` (see the module docstring): no component is empty, '.' or
    '..', or holds a character other than letters, digits, ' ', '.', '_', '-', '%' and '~'."""
    path = "/".join(_component(part) for part in image_id.split("/"))
    if len(path.encode()) <= PATH_BYTES:
        return path
    return _fit(_escaped(image_id), image_id)


class FileNames:
    """Paths inside one folder for a sequence of ids, no two of them sharing a file.

    `claim(image_id)` gives the stem of the id's files, `folder / safe_path(image_id)`; the caller writes
    `STEM + suffix` for suffixes among `suffixes`. Where those files would meet an earlier id's, because
    it is the same id again, the names differ only in case or Unicode normalization (one name on macOS
    and Windows), or a file would take the place of a folder an earlier id made (or the reverse), the
    component that collides gets '~2', '~3', ...: the first one free. The names depend only on the ids
    and their order. Files already in the folder are not looked at: running again writes the same files.
    """

    def __init__(self, folder: str | Path, suffixes: tuple[str, ...]) -> None:
        self.folder = Path(folder)
        self.suffixes = suffixes
        self.renamed = 0
        """Ids that were given a '~N' name so as not to overwrite another id's files."""
        self._stems: set[str] = set()
        self._folders: set[str] = set()

    def claim(self, image_id: str) -> Path:
        """The stem of `image_id`'s files: inside the folder, and apart from every stem claimed before."""
        parts = safe_path(image_id).split("/")
        chosen: list[str] = []
        for index, part in enumerate(parts):
            is_stem, candidate, number = index == len(parts) - 1, part, 1
            while self._taken("/".join([*chosen, candidate]), is_stem):
                number += 1
                candidate = f"{part}~{number}"
            chosen.append(candidate)
        self.renamed += chosen != parts
        self._folders.update(_key("/".join(chosen[:end])) for end in range(1, len(chosen)))
        self._stems.add(_key("/".join(chosen)))
        return self.folder.joinpath(*chosen)

    def _taken(self, path: str, is_stem: bool) -> bool:
        """Whether the stem (or folder) `path` would share a file or folder with what was claimed so far."""
        key = _key(path)
        if is_stem:
            return key in self._stems or any(_key(path + suffix) in self._folders for suffix in self.suffixes)
        return any(key.endswith(_key(suffix)) and key[:-len(_key(suffix))] in self._stems
                   for suffix in self.suffixes)


def _key(path: str) -> str:
    """What a file system that ignores case and Unicode normalization compares (macOS, Windows)."""
    return unicodedata.normalize("NFC", path).casefold()


def _component(part: str) -> str:
    return _SPECIAL[part] if part in _SPECIAL else _fit(_escaped(part), part)


def _escaped(text: str) -> list[str]:
    """Each character of `text`, as itself or as its '%XX' escapes (surrogates from undecodable bytes too)."""
    return [char if char.isalnum() or char in _KEPT
            else "".join(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass")) for char in text]


def _fit(pieces: list[str], whole: str) -> str:
    """The escaped `pieces` of `whole` joined, cut at a piece and marked with a digest of `whole` if too long."""
    text = "".join(pieces)
    if len(text.encode()) <= COMPONENT_BYTES:
        return text
    digest = hashlib.sha256(whole.encode("utf-8", "surrogatepass")).hexdigest()[:_DIGEST]
    budget, kept = COMPONENT_BYTES - len(digest) - 1, []
    for piece in pieces:
        budget -= len(piece.encode())
        if budget < 0:
            break
        kept.append(piece)
    return "".join(kept) + "~" + digest
