import pytest

from gradaccum.data.documents import Document


def test_pair_text_is_prompt_then_completion():
    doc = Document.pair("p", "Q: 2+2?\nA:", " 4")
    assert doc.is_pair and doc.text == "Q: 2+2?\nA: 4"
    assert not Document("t", "plain").is_pair


@pytest.mark.parametrize(
    "kwargs",
    [
        {"text": "ab", "prompt": "a"},
        {"text": "ab", "completion": "b"},
        {"text": "xx", "prompt": "a", "completion": "b"},
    ],
)
def test_inconsistent_pair_is_rejected(kwargs):
    with pytest.raises(ValueError):
        Document("bad", **kwargs)
