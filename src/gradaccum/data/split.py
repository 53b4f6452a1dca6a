"""Hold out part of a corpus for evaluation, deterministically."""

import numpy as np

from gradaccum.data.documents import Document
from gradaccum.errors import UserError


def split_heldout(
    docs: list[Document], fraction: float, seed: int = 0
) -> tuple[list[Document], list[Document]]:
    """Split into (train, heldout) by whole documents, chosen by a seeded shuffle; both keep
    the input order. A single plain document is cut by position: its tail is held out."""
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"held-out fraction {fraction} is outside [0, 1); pass e.g. 0.1")
    if not docs:
        raise UserError("cannot hold out from an empty corpus; give a corpus with text")
    if fraction == 0.0:
        return list(docs), []
    if len(docs) == 1:
        return _split_by_position(docs[0], fraction)
    n_held = min(max(1, round(fraction * len(docs))), len(docs) - 1)
    order = np.random.default_rng(seed).permutation(len(docs))
    held = set(order[:n_held].tolist())
    train = [d for i, d in enumerate(docs) if i not in held]
    heldout = [d for i, d in enumerate(docs) if i in held]
    return train, heldout


def _split_by_position(doc: Document, fraction: float) -> tuple[list[Document], list[Document]]:
    """Cut one document at a whitespace near (1 - fraction) of its length."""
    if doc.is_pair:
        raise UserError(
            "cannot hold out part of a single prompt/completion pair; give at least 2 pairs"
        )
    target = int(len(doc.text) * (1.0 - fraction))
    space = doc.text.rfind(" ", 0, target)
    newline = doc.text.rfind("\n", 0, target)
    cut = max(space, newline)
    if cut <= 0 or target - cut > 1000:
        cut = target
    train, heldout = doc.text[:cut], doc.text[cut:]
    if not train.strip() or not heldout.strip():
        raise UserError(f"{doc.name} is too short to hold out {fraction:.0%} of it; give more text")
    return [Document(f"{doc.name}[train]", train)], [Document(f"{doc.name}[heldout]", heldout)]
