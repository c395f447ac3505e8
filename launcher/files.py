"""Writing output files all or nothing: each file goes to a temporary name beside its target
and is renamed into place only once every file has been written."""

from __future__ import annotations

import os
from pathlib import Path

from launcher.errors import UsageError
from trainer.text import shown


def write_all(directory: Path, files: dict[str, str], create_dir: bool = True) -> None:
    """Write ``files`` (name -> text) into ``directory``; on any failure none of them is left
    (a directory this call created is removed again) and ``UsageError`` names the path."""
    created = not directory.exists() and create_dir
    try:
        if create_dir:
            directory.mkdir(parents=True, exist_ok=True)
        elif not directory.is_dir():
            raise OSError(2, "no such directory", str(directory))
    except OSError as err:
        raise UsageError(f"{shown(str(directory))}: cannot write there "
                            f"({err.strerror or err})") from None
    temps: list[Path] = []
    try:
        for name, text in files.items():
            target = directory / name
            if target.is_dir():
                raise IsADirectoryError(21, "is a directory", str(target))
            temp = directory / f".{name}.{os.getpid()}.tmp"
            temps.append(temp)
            temp.write_text(text, encoding="utf-8")
        for temp, name in zip(temps, files, strict=True):
            temp.replace(directory / name)
        temps.clear()
    except OSError as err:
        where = err.filename or str(directory)
        raise UsageError(f"{shown(str(where))}: cannot write ({err.strerror or err}); "
                            "no file was written") from None
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)
        if created and temps and not any(directory.iterdir()):
            directory.rmdir()
