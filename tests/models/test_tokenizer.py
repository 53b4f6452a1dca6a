import pytest

from gradaccum.errors import UserError
from gradaccum.models.tokenizer import train_tokenizer

TEXT = "def f(x):\n    return x ** 2  # Grüße, 東京 🙂\n"


def test_training_is_deterministic() -> None:
    first, second = train_tokenizer(512), train_tokenizer(512)
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()


def test_vocab_size_and_special_ids() -> None:
    tokenizer = train_tokenizer(512)
    assert len(tokenizer) == 512
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id) == (0, 1, 2)


def test_any_text_round_trips_with_valid_ids() -> None:
    tokenizer = train_tokenizer(512)
    ids = tokenizer(TEXT)["input_ids"]
    assert max(ids) < 512
    assert tokenizer.decode(ids) == TEXT


def test_merges_compress_the_training_language() -> None:
    tokenizer = train_tokenizer(512)
    text = "The return statement leaves the current function call."
    assert len(tokenizer(text)["input_ids"]) < len(text.encode()) / 2


def test_a_huge_request_stops_at_what_the_corpus_supports() -> None:
    tokenizer = train_tokenizer(262_144)
    assert 8_000 < len(tokenizer) < 262_144


def test_too_small_a_vocab_is_a_user_error() -> None:
    with pytest.raises(UserError, match="at least 259"):
        train_tokenizer(100)
