"""Hostile corpus files through ``gradaccum finetune``: never a traceback, never a silent drop.

Every file is read or counted as skipped, and every non-blank JSONL line becomes a document
or is counted as a skipped line, in the one-line report the run prints.
"""

from __future__ import annotations

import json
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradaccum.cli.main import main
from gradaccum.data.decoding import decode_bytes, looks_binary

FAST = ["--max-steps", "1", "--global-batch", "2", "--micro-batch", "1", "--seq-len", "16"]
FAST += ["--eval-samples", "1", "--save-every", "0"]


def hostile_folder(root):
    root.mkdir()
    (root / "blank-lines.txt").write_text("\n\n   \n\t\n" + "def g(x):\n    return x\n\n" * 20)
    (root / "bad-utf8.txt").write_bytes(b"caf\xe9 \xff\xfe fine text; " * 100)
    (root / "nul.txt").write_bytes(b"abc\x00def\x00 " * 200)
    (root / "long-line.txt").write_text("x = 1; " * 30_000)  # one 210 kB line, tokenized
    (root / "binary.txt").write_bytes(bytes(range(256)) * 16)
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (root / "empty.txt").write_text("  \n")
    rows = [
        {"text": "hello world " * 20},
        {"txt": "x" * 10_000_000},  # a single 10 MB line with the wrong field
        {"text": 5},
        [1, 2],
        {"prompt": "Q: 2+2?", "completion": " 4"},
        {"prompt": "Q", "answer": "A"},
        {"text": "lone \ud800 surrogate " * 10},
    ]
    lines = [json.dumps(r) for r in rows] + ["{not json", "", "[" * 100_000]
    (root / "mixed.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_hostile_folder_trains_and_reports_every_skip(tmp_path, capsys):
    data = hostile_folder(tmp_path / "data")
    argv = ["finetune", "--model", "random:gpt2", "--data", str(data), "--out", str(tmp_path / "o")]
    assert main([*argv, *FAST]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    report = next(line for line in captured.out.splitlines() if line.startswith("data: "))
    assert report == (
        "data: read 7 documents from 6 files; "
        "skipped 6 lines (2 invalid JSON, 1 missing 'text', 1 non-string 'text', "
        "1 not a JSON object, 1 missing 'completion'); "
        "skipped 3 files (1 binary, 1 empty, 1 unsupported type); "
        "replaced 310 invalid UTF-8 sequences; removed 400 NUL bytes"
    )


def summary_numbers(text: str) -> dict[str, int]:
    """Counts from a ReadReport summary."""
    found = {"docs": r"read (\d+) documents?", "read": r"from (\d+) files?"}
    found |= {"lines": r"skipped (\d+) lines?", "skipped": r"skipped (\d+) files?"}
    found |= {"empty": r"skipped \d+ files? \([^)]*?(\d+) empty"}
    return {k: int(m.group(1)) if (m := re.search(p, text)) else 0 for k, p in found.items()}


RECORDS = st.one_of(
    st.fixed_dictionaries({"text": st.text(max_size=20)}),
    st.fixed_dictionaries({"prompt": st.text(max_size=9), "completion": st.text(max_size=9)}),
    st.dictionaries(st.sampled_from(["text", "prompt", "completion", "x"]), st.integers()),
    st.lists(st.integers(), max_size=2),
).map(json.dumps)
LINE = st.one_of(RECORDS, st.text(max_size=20)).map(str.encode) | st.binary(max_size=20)
JSONL = st.lists(LINE, max_size=8).map(b"\n".join)
FILES = st.lists(
    st.tuples(st.sampled_from([".txt", ".jsonl", ".JSONL", ".md"]), JSONL | st.binary()),
    min_size=1,
    max_size=4,
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(FILES)
def test_fuzzed_corpus_accounts_for_every_file_and_line(tmp_path_factory, capsys, files):
    root = tmp_path_factory.mktemp("fuzz")
    expected = {"read": 0, "skipped": 0, "empty": 0, "items": 0}
    for i, (suffix, raw) in enumerate(files):
        (root / f"f{i}{suffix}").write_bytes(raw)
        if suffix == ".md" or looks_binary(raw):
            expected["skipped"] += 1
            continue
        expected["read"] += 1
        text = decode_bytes(raw).text
        if suffix == ".txt":
            expected["empty"] += not text.strip()
            expected["items"] += bool(text.strip())
        else:
            expected["items"] += sum(1 for line in text.split("\n") if line.strip())
    argv = ["finetune", "--model", "no-such-model", "--data", str(root), "--out", str(root / "o")]
    assert main(argv) == 2  # the corpus is read first; the model spec then stops the run
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    errors = captured.err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("gradaccum: error: ")
    got = summary_numbers(captured.out + errors[0])
    assert got["read"] == expected["read"]
    assert got["skipped"] == expected["skipped"] + expected["empty"]
    assert got["docs"] + got["lines"] == expected["items"]
