"""A small byte-level BPE tokenizer trained offline on the Python language reference.

No tokenizer can be downloaded here, so random models get one trained in well under a second on
`pydoc_data.topics` (about 0.5 MB of English prose and Python code shipped with CPython).
Byte-level BPE has no unknown token: every string encodes, to ids below `vocab_size`.
"""

from functools import lru_cache
from pydoc_data.topics import topics

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from gradaccum.errors import UserError

PAD, EOS, BOS = "<pad>", "<eos>", "<bos>"
SPECIAL_TOKENS = (PAD, EOS, BOS)  # ids 0, 1, 2, as in Gemma
MIN_VOCAB = len(SPECIAL_TOKENS) + 256  # the specials and the 256 byte tokens


def corpus() -> list[str]:
    """The training text: every topic of the Python language reference, in a fixed order."""
    return [topics[name] for name in sorted(topics)]


@lru_cache(maxsize=8)
def _trained_json(vocab_size: int) -> str:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer)
    return tokenizer.to_str()


def train_tokenizer(vocab_size: int = 512, model_max_length: int = 1024) -> PreTrainedTokenizerFast:
    """Train (deterministically) a byte-level BPE tokenizer with at most `vocab_size` tokens.

    The corpus supports about 9.2k tokens; a larger request stops there, so ids stay valid.
    """
    if vocab_size < MIN_VOCAB:
        raise UserError(f"tokenizer vocab_size {vocab_size} is too small: use at least {MIN_VOCAB}")
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_json(vocab_size)),
        pad_token=PAD,
        eos_token=EOS,
        bos_token=BOS,
        model_max_length=model_max_length,
    )
