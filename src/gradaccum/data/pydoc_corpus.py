"""The default corpus: the Python language reference that ships with CPython.

`pydoc_data.topics.topics` maps ~79 topic names to their text (~465 KB); it needs no
download and no licence beyond Python's. Its content follows the running Python version.
"""

from pydoc_data.topics import topics

from gradaccum.data.documents import Document
from gradaccum.data.split import split_heldout


def pydoc_documents() -> list[Document]:
    """One document per distinct topic text, sorted by name; topics sharing a text
    (e.g. 'else' and 'if') become one document named 'pydoc:else,if'."""
    names_by_text: dict[str, list[str]] = {}
    for name in sorted(topics):
        names_by_text.setdefault(topics[name], []).append(name)
    docs = [Document("pydoc:" + ",".join(names), text) for text, names in names_by_text.items()]
    return sorted(docs, key=lambda d: d.name)


def default_corpus(
    heldout_fraction: float = 0.1, seed: int = 0
) -> tuple[list[Document], list[Document]]:
    """(train, heldout) split of the pydoc topics by topic: no topic text is in both."""
    return split_heldout(pydoc_documents(), heldout_fraction, seed)
