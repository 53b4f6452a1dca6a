import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradaccum.data.decoding import decode_bytes
from gradaccum.data.documents import Document
from gradaccum.data.readers import read_corpus
from gradaccum.errors import UserError


def _jsonl(*records):
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in records).encode()


def test_txt_file_is_one_document(tmp_path):
    (tmp_path / "book.txt").write_text("Chapter 1\n\nIt was a dark night.\n")
    docs, report = read_corpus(tmp_path / "book.txt")
    assert docs == [Document("book.txt", "Chapter 1\n\nIt was a dark night.\n")]
    assert report.summary() == "read 1 document from 1 file"


def test_jsonl_bad_lines_are_skipped_and_counted_per_reason(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(
        _jsonl(
            {"text": "good one"},
            "",
            "   ",
            "{not json",
            '{"text": "unterminated',
            {"txt": "typo"},
            {"text": 42},
            {"text": None},
            [1, 2],
            "17",
            {"text": "  "},
            {"prompt": "Q?", "completion": " A."},
            {"prompt": "Q?"},
            {"prompt": "Q?", "completion": ["A"]},
            {"prompt": "Q?", "completion": ""},
            {"prompt": 3, "completion": "x"},
            "[" * 100_000 + "]" * 100_000,
        )
        + b"\n"
    )
    docs, report = read_corpus(path)
    assert docs == [
        Document("data.jsonl:1", "good one"),
        Document.pair("data.jsonl:12", "Q?", " A."),
    ]
    assert report.blank_lines == 3
    assert report.skipped_lines == {
        "invalid JSON": 3,
        "missing 'text'": 1,
        "non-string 'text'": 2,
        "not a JSON object": 2,
        "empty 'text'": 1,
        "missing 'completion'": 1,
        "non-string 'completion'": 1,
        "empty 'completion'": 1,
        "non-string 'prompt'": 1,
    }
    summary = report.summary()
    assert summary.startswith("read 2 documents from 1 file; skipped 13 lines (3 invalid JSON, ")
    assert "1 missing 'text'" in summary


def test_invalid_utf8_nul_bytes_and_surrogates_are_repaired_and_counted(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"caf\xe9 au lait\x00 ok\n")
    (tmp_path / "b.jsonl").write_bytes(b'{"text": "x\\ud800y\\u0000z \xff"}\n')
    docs, report = read_corpus(tmp_path)
    assert [d.text for d in docs] == ["caf\ufffd au lait ok\n", "x?yz \ufffd"]
    assert (report.invalid_utf8, report.nul_bytes) == (3, 2)
    assert "replaced 3 invalid UTF-8 sequences; removed 2 NUL bytes" in report.summary()
    for doc in docs:
        doc.text.encode("utf-8")


def test_huge_single_lines(tmp_path):
    line = "word " * 2_000_000
    (tmp_path / "big.txt").write_text(line)
    (tmp_path / "big.jsonl").write_text(json.dumps({"text": line}))
    docs, _ = read_corpus(tmp_path)
    assert [len(d.text) for d in docs] == [10_000_000, 10_000_000]


def test_folder_is_recursive_sorted_and_skips_binary_empty_hidden_and_unknown(tmp_path):
    rng = random.Random(0)
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.txt").write_text("hidden")
    (tmp_path / ".secret.txt").write_text("hidden")
    (tmp_path / "z.txt").write_text("last")
    (tmp_path / "sub" / "b.jsonl").write_text('{"text": "middle"}\n')
    (tmp_path / "sub" / "deeper" / "a.txt").write_text("first")
    (tmp_path / "sub" / "model.txt").write_bytes(bytes(rng.randrange(256) for _ in range(4096)))
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    (tmp_path / "notes.csv").write_text("a,b")
    docs, report = read_corpus(tmp_path)
    assert [d.name for d in docs] == ["sub/b.jsonl:1", "sub/deeper/a.txt", "z.txt"]
    assert report.files_read == 4
    assert report.skipped_files == {"binary": 1, "empty": 1, "unsupported type": 1}


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.txt", None, "does not exist"),
        ("data.csv", b"a,b\n", "unsupported corpus file type '.csv'"),
        ("blank.txt", b"\n \n", "no usable text"),
        ("blank.jsonl", b"\n\n{}\n", "no usable text"),
        ("weights.txt", bytes(range(256)) * 64, "1 binary"),
    ],
)
def test_unusable_corpus_is_one_line_user_error(tmp_path, name, content, message):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(UserError, match=message) as info:
        read_corpus(tmp_path / name)
    assert "\n" not in str(info.value)


def test_empty_folder_is_user_error(tmp_path):
    with pytest.raises(UserError, match="no usable text"):
        read_corpus(tmp_path)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
records = st.dictionaries(
    st.sampled_from(["text", "prompt", "completion", "other"]), json_values, max_size=3
)
lines = st.one_of(
    records.map(lambda r: json.dumps(r).encode()),
    st.binary(max_size=40),
    st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(content=st.lists(lines, max_size=12).map(b"\n".join) | st.binary(max_size=300))
def test_fuzzed_jsonl_only_ever_raises_user_error_and_accounts_for_every_line(tmp_path, content):
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(content)
    try:
        docs, report = read_corpus(path)
    except UserError as error:
        assert "\n" not in str(error)
        return
    n_lines = len(decode_bytes(content).text.split("\n"))
    assert len(docs) + report.skipped_lines.total() + report.blank_lines == n_lines
    for doc in docs:
        doc.text.encode("utf-8")
        assert "\x00" not in doc.text and doc.text.strip()
