import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradaccum.data.documents import Document
from gradaccum.data.split import split_heldout
from gradaccum.errors import UserError


@settings(deadline=None)
@given(n=st.integers(2, 60), fraction=st.floats(0.01, 0.99), seed=st.integers(0, 2**32))
def test_split_by_document_partitions_in_order(n, fraction, seed):
    docs = [Document(f"d{i}", f"text {i}") for i in range(n)]
    train, heldout = split_heldout(docs, fraction, seed)
    assert 1 <= len(heldout) <= n - 1
    assert sorted(train + heldout, key=docs.index) == docs
    assert train == sorted(train, key=docs.index) and heldout == sorted(heldout, key=docs.index)
    assert split_heldout(docs, fraction, seed) == (train, heldout)


def test_zero_fraction_holds_out_nothing():
    docs = [Document("a", "x"), Document("b", "y")]
    assert split_heldout(docs, 0.0, 0) == (docs, [])


def test_single_document_is_cut_by_position_at_whitespace():
    text = " ".join(f"word{i}" for i in range(1000))
    (train,), (heldout,) = split_heldout([Document("book.txt", text)], 0.1, 0)
    assert train.text + heldout.text == text
    assert heldout.text.startswith(" ")
    assert 0.08 < len(heldout.text) / len(text) < 0.12


@pytest.mark.parametrize(
    "docs, fraction",
    [
        ([Document("a", "x"), Document("b", "y")], 1.0),
        ([Document("a", "x"), Document("b", "y")], -0.1),
        ([], 0.1),
        ([Document.pair("p", "q", "a")], 0.1),
        ([Document("tiny", "x")], 0.1),
    ],
)
def test_impossible_splits_are_user_errors(docs, fraction):
    with pytest.raises(UserError):
        split_heldout(docs, fraction, 0)
