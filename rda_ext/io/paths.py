"""The paths a command reads and writes, checked together before any work: no output may be
the same file as an input or as another output, no output may lie inside a folder that another
output fills, and nothing that exists may be replaced unless it is what is written there (a
regular file for a file, a directory for a folder). ``cp a a`` refuses for the same reason: the
input would be gone by the time the output is whole."""

from __future__ import annotations

import os

from rda_ext.io.atomic import check_parent, check_writable, kind_of


def same_file(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` name one file: the same device and inode where both exist (hard
    links, symlinks, ``./`` and ``..`` included), the same resolved path otherwise."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def within(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies beneath it, once both are resolved."""
    p, f = os.path.realpath(path), os.path.realpath(folder)
    return p == f or p.startswith(f.rstrip(os.sep) + os.sep)


def asks_for_folder(path: str) -> bool:
    """Whether an output path asks for a folder: it ends in a path separator, or names an existing
    folder."""
    return path.endswith(os.sep) or os.path.isdir(path)


def check_folder(label: str, path: str, whole: bool) -> None:
    """A folder that a command will create or fill: absent, or a directory (a symlink to one
    counts as the folder it names). ``whole``: one that is put in place whole, by a rename in the
    folder that holds it (a result folder): that folder must be writable, and this one empty."""
    if whole:
        check_parent(path)
    target = os.path.realpath(path)  # "file/" names no file, but asks for a folder where one is
    if os.path.exists(target) and not os.path.isdir(target):
        if whole:
            raise FileExistsError(f"{path}: a file of that name exists (a folder was asked for by the trailing /)")
        raise FileExistsError(f"{label} {path} exists and is {kind_of(os.stat(target).st_mode)}, not a folder")
    if whole and os.path.isdir(target) and os.listdir(target):
        raise FileExistsError(f"{path}: the folder exists and is not empty; remove it or choose another {label}")


def check_paths(inputs: dict[str, str | None], files: dict[str, str | None],
                folders: dict[str, str | None] | None = None, whole: tuple[str, ...] = ()) -> None:
    """Fails, naming both, where an output could destroy an input or another output.

    ``inputs``: what is read (label -> path); ``files``: regular files that are written;
    ``folders``: folders that are written into (a result folder, a checkpoint), of which those
    labelled in ``whole`` are put in place whole (``check_folder``). A label is how the user named
    the path (``--out``, ``input``); entries whose path is None are left out."""
    inputs = {k: os.fspath(v) for k, v in inputs.items() if v is not None}
    files = {k: os.fspath(v) for k, v in files.items() if v is not None}
    folders = {k: os.fspath(v) for k, v in (folders or {}).items() if v is not None}
    for label, path in folders.items():
        check_folder(label, path, whole=label in whole)
    for label, path in files.items():
        check_writable(path, label)
    for label, path in {**files, **folders}.items():
        for other, source in inputs.items():
            if same_file(path, source):
                raise ValueError(f"{label} {path} is the same file as {other} {source}: it would be replaced by the "
                                 "output; choose another path")
    outputs = list(files.items())
    for i, (label, path) in enumerate(outputs):
        for other, path2 in outputs[i + 1:]:
            if same_file(path, path2):
                raise ValueError(f"{label} and {other} are the same file ({path}): one would replace the other")
    for label, path in files.items():
        for other, folder in folders.items():
            if within(path, folder):
                raise ValueError(f"{label} {path} lies inside the {other} folder {folder}, which holds only what "
                                 f"{other} writes: choose a path outside it")
    names = list(folders.items())
    for i, (label, folder) in enumerate(names):
        for other, folder2 in names[i + 1:]:
            if within(folder, folder2) or within(folder2, folder):
                raise ValueError(f"the {label} folder {folder} and the {other} folder {folder2} overlap: each must be "
                                 "a folder of its own")
