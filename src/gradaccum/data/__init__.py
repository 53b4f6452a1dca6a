"""Corpora, tokenized samples, batches and the resumable order of optimizer steps."""

from gradaccum.data.collate import collate, count_loss_tokens
from gradaccum.data.documents import Document
from gradaccum.data.pydoc_corpus import default_corpus, pydoc_documents
from gradaccum.data.readers import ReadReport, read_corpus
from gradaccum.data.samples import IGNORE_INDEX, Sample, SampleReport, make_samples
from gradaccum.data.split import split_heldout
from gradaccum.data.windows import WindowSampler

__all__ = [
    "IGNORE_INDEX",
    "Document",
    "ReadReport",
    "Sample",
    "SampleReport",
    "WindowSampler",
    "collate",
    "count_loss_tokens",
    "default_corpus",
    "make_samples",
    "pydoc_documents",
    "read_corpus",
    "split_heldout",
]
