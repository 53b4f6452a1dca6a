from pydoc_data.topics import topics

from gradaccum.data.pydoc_corpus import default_corpus, pydoc_documents


def _topics(docs):
    return {topic for doc in docs for topic in doc.name.removeprefix("pydoc:").split(",")}


def test_documents_cover_every_topic_once_with_distinct_texts():
    docs = pydoc_documents()
    assert _topics(docs) == set(topics)
    assert len({d.text for d in docs}) == len(docs)
    assert sum(len(d.name.split(",")) for d in docs) == len(topics)


def test_split_is_by_topic_deterministic_and_seeded():
    train, heldout = default_corpus()
    assert not _topics(train) & _topics(heldout)
    assert not {d.text for d in train} & {d.text for d in heldout}
    assert _topics(train) | _topics(heldout) == set(topics)
    assert len(heldout) == round(0.1 * len(pydoc_documents()))
    assert default_corpus() == (train, heldout)
    assert default_corpus(seed=1)[1] != heldout
