import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from gradaccum.data.documents import Document
from gradaccum.data.pydoc_corpus import default_corpus
from gradaccum.data.samples import make_samples
from gradaccum.errors import UserError

EOS, BOS = 1, 2


class CharTokenizer:
    """One token per character; adds BOS by default when add_bos, like Llama or Gemma."""

    eos_token_id = EOS
    bos_token_id = BOS

    def __init__(self, add_bos: bool):
        self.add_bos = add_bos

    def encode(self, text, add_special_tokens=True):
        ids = [ord(c) + 3 for c in text]
        return [BOS] + ids if add_special_tokens and self.add_bos else ids


texts = st.text(st.characters(codec="utf-8"), max_size=60)


@pytest.fixture(scope="module")
def bpe():
    """A byte-level BPE trained offline on pydoc text (no hub downloads)."""
    train, _ = default_corpus()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<eos>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([d.text for d in train[:10]], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")


@settings(deadline=None)
@given(text=texts, seq_len=st.integers(2, 16), add_bos=st.booleans())
def test_chunks_concatenate_to_the_document_tokens(text, seq_len, add_bos):
    tokenizer = CharTokenizer(add_bos)
    samples, report = make_samples([Document("d", text + "x")], tokenizer, seq_len)
    expected = tokenizer.encode(text + "x", False) + [EOS]
    prefix = [BOS] if add_bos else []
    assert all(s["input_ids"][: len(prefix)] == prefix for s in samples)  # BOS on every chunk
    assert all(s["labels"][: len(prefix)] == [-100] * len(prefix) for s in samples)
    joined = [t for s in samples for t in s["input_ids"][len(prefix) :]]
    assert all(2 <= len(s["input_ids"]) <= seq_len for s in samples)
    assert all(s["labels"][len(prefix) :] == s["input_ids"][len(prefix) :] for s in samples)
    assert joined == expected[: len(joined)]
    # Only a one-token tail without BOS predicts nothing and is dropped.
    assert len(expected) - len(joined) == report.dropped_no_loss <= (0 if prefix else 1)
    chunks = -(-len(expected) // (seq_len - len(prefix)))
    assert (report.docs_split, report.chunks_from_split) == ((1, chunks) if chunks > 1 else (0, 0))


@settings(deadline=None)
@given(prompt=texts, completion=texts.filter(str.strip), add_bos=st.booleans())
def test_only_completion_and_eos_carry_loss(prompt, completion, add_bos):
    tokenizer = CharTokenizer(add_bos)
    (sample,), report = make_samples([Document.pair("p", prompt, completion)], tokenizer, 1000)
    masked = len(prompt) + add_bos
    assert sample["input_ids"][: int(add_bos)] == [BOS] * add_bos
    assert sample["labels"][:masked] == [-100] * masked
    assert sample["labels"][masked:] == tokenizer.encode(completion, False) + [EOS]
    assert sample["input_ids"][masked:] == sample["labels"][masked:]
    assert report.loss_tokens == len(completion) + 1 - (masked == 0)


@settings(deadline=None)
@given(
    pairs=st.lists(st.tuples(texts, texts.filter(str.strip)), min_size=1, max_size=5),
    seq_len=st.integers(2, 12),
)
def test_chunked_pairs_keep_masks_and_drop_prompt_only_chunks(pairs, seq_len):
    docs = [Document.pair(f"p{i}", p, c) for i, (p, c) in enumerate(pairs)]
    try:
        samples, report = make_samples(docs, CharTokenizer(False), seq_len)
    except UserError:
        return
    for s in samples:
        assert len(s["input_ids"]) <= seq_len
        assert all(lab in (-100, tok) for lab, tok in zip(s["labels"], s["input_ids"]))
        assert sum(lab != -100 for lab in s["labels"][1:]) >= 1
    assert report.loss_tokens == sum(sum(x != -100 for x in s["labels"][1:]) for s in samples)


def test_real_tokenizer_round_trips_every_document(bpe):
    _, docs = default_corpus()
    samples, report = make_samples(docs, bpe, seq_len=128)
    assert report.samples == len(samples) and report.docs_split > 0
    joined = [t for s in samples for t in s["input_ids"]]
    eos_positions = [i for i, t in enumerate(joined) if t == bpe.eos_token_id]
    assert len(eos_positions) == len(docs) - report.dropped_no_loss
    first = joined[: eos_positions[0]]
    assert bpe.decode(first) == docs[0].text


def test_no_samples_at_all_is_a_user_error_and_bad_seq_len_too():
    with pytest.raises(UserError, match="no training samples"):
        make_samples([Document("a", "")], CharTokenizer(False), 8)
    with pytest.raises(UserError, match="at least 2"):
        make_samples([Document("a", "abc")], CharTokenizer(False), 1)
    assert make_samples([], CharTokenizer(False), 8)[0] == []
