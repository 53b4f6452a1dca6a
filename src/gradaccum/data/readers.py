"""Read a user's corpus: a .txt file, a .jsonl file, or a folder of them.

A .txt file is one document (make_samples cuts long documents into chunks, so nothing is
gained by guessing paragraph boundaries). A .jsonl line is {"text": ...} or
{"prompt": ..., "completion": ...}. Bad input is skipped and counted in a ReadReport,
never fatal, unless nothing usable is left.
"""

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from gradaccum.data.decoding import Decoded, clean_str, decode_bytes, looks_binary
from gradaccum.data.documents import Document
from gradaccum.errors import UserError

SUFFIXES = (".txt", ".jsonl")


@dataclass
class ReadReport:
    """What read_corpus read, skipped (counted per reason) and repaired."""

    files_read: int = 0
    documents: int = 0
    blank_lines: int = 0
    skipped_lines: Counter[str] = field(default_factory=Counter)
    skipped_files: Counter[str] = field(default_factory=Counter)
    invalid_utf8: int = 0
    nul_bytes: int = 0

    def summary(self) -> str:
        """One line, e.g. "read 5 documents from 2 files; skipped 3 lines (2 invalid JSON,
        1 missing 'text')"."""
        parts = [
            f"read {_plural(self.documents, 'document')} from {_plural(self.files_read, 'file')}"
        ]
        for counts, noun in ((self.skipped_lines, "line"), (self.skipped_files, "file")):
            if counts:
                reasons = ", ".join(f"{n} {reason}" for reason, n in counts.most_common())
                parts.append(f"skipped {_plural(counts.total(), noun)} ({reasons})")
        if self.invalid_utf8:
            parts.append(f"replaced {_plural(self.invalid_utf8, 'invalid UTF-8 sequence')}")
        if self.nul_bytes:
            parts.append(f"removed {_plural(self.nul_bytes, 'NUL byte')}")
        return "; ".join(parts)

    def _repaired(self, decoded: Decoded) -> str:
        self.invalid_utf8 += decoded.replaced
        self.nul_bytes += decoded.nuls
        return decoded.text


def read_corpus(path: str | Path) -> tuple[list[Document], ReadReport]:
    """Read documents from a .txt/.jsonl file or a folder of them (recursive, sorted by
    path; hidden files and folders are ignored). Raises UserError if nothing is usable."""
    root = Path(path)
    if not root.exists():
        raise UserError(
            f"corpus path {root} does not exist; pass a .txt or .jsonl file or a folder"
        )
    if root.is_dir():
        files = _walk(root)
    elif not root.is_file():
        raise UserError(f"corpus path {root} is not a regular file; pass a .txt or .jsonl file")
    elif root.suffix.lower() not in SUFFIXES:
        raise UserError(
            f"unsupported corpus file type '{root.suffix}' ({root}); use .txt or .jsonl files"
        )
    else:
        files = [(root, root.name)]
    docs: list[Document] = []
    report = ReadReport()
    for file, name in files:
        docs.extend(_read_file(file, name, report))
    report.documents = len(docs)
    if not docs:
        raise UserError(f"no usable text in {root} ({report.summary()}); give .txt or .jsonl text")
    return docs, report


def _walk(root: Path) -> list[tuple[Path, str]]:
    """Regular files under root in sorted order, with their path relative to root."""
    found = []
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            file = Path(folder, filename)
            if not filename.startswith(".") and file.is_file():
                found.append(file.relative_to(root))
    return [
        (root / rel, _printable(rel.as_posix())) for rel in sorted(found, key=lambda r: r.parts)
    ]


def _read_file(file: Path, name: str, report: ReadReport) -> list[Document]:
    if file.suffix.lower() not in SUFFIXES:
        report.skipped_files["unsupported type"] += 1
        return []
    try:
        raw = file.read_bytes()
    except OSError:
        report.skipped_files["unreadable"] += 1
        return []
    if looks_binary(raw):
        report.skipped_files["binary"] += 1
        return []
    report.files_read += 1
    text = report._repaired(decode_bytes(raw))
    if file.suffix.lower() == ".jsonl":
        return _read_jsonl(text, name, report)
    if not text.strip():
        report.skipped_files["empty"] += 1
        return []
    return [Document(name, text)]


def _read_jsonl(text: str, name: str, report: ReadReport) -> list[Document]:
    docs = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            report.blank_lines += 1
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            report.skipped_lines["invalid JSON"] += 1
            continue
        doc = _document(record, f"{name}:{number}", report)
        if isinstance(doc, str):
            report.skipped_lines[doc] += 1
        else:
            docs.append(doc)
    return docs


def _document(record: object, name: str, report: ReadReport) -> Document | str:
    """The document a JSONL record holds, or the reason it holds none."""
    if not isinstance(record, dict):
        return "not a JSON object"
    keys = ("prompt", "completion") if "prompt" in record or "completion" in record else ("text",)
    for key in keys:
        if key not in record:
            return f"missing '{key}'"
        if not isinstance(record[key], str):
            return f"non-string '{key}'"
    values = [clean_str(record[key]) for key in keys]
    if not values[-1].text.strip():
        return f"empty '{keys[-1]}'"
    texts = [report._repaired(value) for value in values]
    if len(texts) == 2:
        return Document.pair(name, texts[0], texts[1])
    return Document(name, texts[0])


def _printable(name: str) -> str:
    """A file name safe to print: undecodable bytes (surrogate escapes) become '?'."""
    return name.encode("utf-8", errors="replace").decode("utf-8")


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
