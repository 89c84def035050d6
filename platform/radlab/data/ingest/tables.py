"""Reading the CSV tables the datasets ship (plain or gzipped), with errors that name the file."""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

from radlab.data.ingest.common import IngestError


def find_table(root: Path, names: list[str]) -> Path:
    """The first of `names` present under root, also as `.gz`."""
    for name in names:
        for candidate in (root / name, root / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise IngestError(f"{root}: none of {', '.join(names)} (or .gz) found")


def read_rows(path: Path, required: list[str]) -> list[dict[str, str]]:
    """Rows of a CSV as dicts; every column in `required` must be in the header."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
            reader = csv.DictReader(text)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise IngestError(f"{path}: missing column(s) {', '.join(missing)}; has {reader.fieldnames}")
            return list(reader)
    except (UnicodeDecodeError, csv.Error, OSError) as err:
        raise IngestError(f"{path}: not a readable CSV ({err})") from None
