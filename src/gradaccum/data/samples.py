"""Tokenize documents into training samples of at most seq_len tokens."""

from dataclasses import dataclass
from typing import Any

from gradaccum.data.documents import Document
from gradaccum.errors import UserError

IGNORE_INDEX = -100

Sample = dict[str, list[int]]


@dataclass
class SampleReport:
    """How documents became samples: splits of long documents and dropped chunks."""

    documents: int = 0
    samples: int = 0
    tokens: int = 0
    loss_tokens: int = 0
    docs_split: int = 0
    chunks_from_split: int = 0
    dropped_no_loss: int = 0

    def summary(self) -> str:
        """One line for the CLI."""
        line = (
            f"{self.samples} samples ({self.tokens} tokens, {self.loss_tokens} with loss) "
            f"from {self.documents} documents"
        )
        if self.docs_split:
            line += f"; split {self.docs_split} long documents into {self.chunks_from_split} chunks"
        if self.dropped_no_loss:
            line += f"; dropped {self.dropped_no_loss} chunks with no token to predict"
        return line


def make_samples(
    docs: list[Document], tokenizer: Any, seq_len: int
) -> tuple[list[Sample], SampleReport]:
    """Tokenize each document (EOS appended) and cut it into consecutive chunks of at most
    seq_len tokens. If the tokenizer puts BOS before text (Llama, Gemma), EVERY chunk starts
    with BOS: such models score a chunk without it far worse. Prompt tokens of pairs get
    label -100; chunks in which the model would predict no token are dropped and counted."""
    if seq_len < 2:
        raise UserError(f"sequence length {seq_len} is too short; use at least 2 tokens")
    prefix = _bos_prefix(tokenizer)
    width = seq_len - len(prefix)
    eos = getattr(tokenizer, "eos_token_id", None)
    suffix = [eos] if eos is not None else []
    samples: list[Sample] = []
    report = SampleReport(documents=len(docs))
    for doc in docs:
        input_ids, labels = _tokenize(doc, tokenizer, suffix)
        starts = range(0, len(input_ids), width)
        if len(starts) > 1:
            report.docs_split += 1
            report.chunks_from_split += len(starts)
        for start in starts:
            chunk_labels = [IGNORE_INDEX] * len(prefix) + labels[start : start + width]
            n_loss = sum(1 for label in chunk_labels[1:] if label != IGNORE_INDEX)
            if n_loss == 0:
                report.dropped_no_loss += 1
                continue
            chunk_ids = prefix + input_ids[start : start + width]
            samples.append({"input_ids": chunk_ids, "labels": chunk_labels})
            report.tokens += len(chunk_labels)
            report.loss_tokens += n_loss
    report.samples = len(samples)
    if docs and not samples:
        raise UserError(f"no training samples in {len(docs)} documents; give longer texts")
    return samples, report


def _tokenize(doc: Document, tokenizer: Any, suffix: list[int]) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one whole document without BOS; prompt and completion are
    tokenized apart so the label mask falls exactly on their boundary."""
    if not doc.is_pair:
        ids = _encode(tokenizer, doc.text) + suffix
        return ids, list(ids)
    masked = _encode(tokenizer, doc.prompt)
    trained = _encode(tokenizer, doc.completion) + suffix
    return masked + trained, [IGNORE_INDEX] * len(masked) + trained


def _encode(tokenizer: Any, text: str) -> list[int]:
    return [int(i) for i in tokenizer.encode(text, add_special_tokens=False)]


def _bos_prefix(tokenizer: Any) -> list[int]:
    """[bos] if the tokenizer puts BOS before text by default (Llama, Gemma), else []."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return []
    with_special = tokenizer.encode("a", add_special_tokens=True)
    plain = tokenizer.encode("a", add_special_tokens=False)
    return [bos] if with_special[:1] == [bos] and plain[:1] != [bos] else []
