"""Pad a list of samples into a batch, and count the label positions that carry loss."""

import torch

from gradaccum.data.samples import IGNORE_INDEX, Sample


def collate(
    samples: list[Sample], pad_id: int, ignore_index: int = IGNORE_INDEX
) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sample: input_ids (pad_id), attention_mask (0 on pads)
    and labels (ignore_index on pads), all int64 of shape (len(samples), longest)."""
    if not samples:
        raise ValueError("collate needs at least one sample")
    longest = max(len(s["input_ids"]) for s in samples)
    input_ids = torch.full((len(samples), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), longest), dtype=torch.long)
    labels = torch.full((len(samples), longest), ignore_index, dtype=torch.long)
    for row, sample in enumerate(samples):
        n = len(sample["input_ids"])
        input_ids[row, :n] = torch.tensor(sample["input_ids"], dtype=torch.long)
        attention_mask[row, :n] = 1
        labels[row, :n] = torch.tensor(sample["labels"], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def count_loss_tokens(batch: dict[str, torch.Tensor], ignore_index: int = IGNORE_INDEX) -> int:
    """Positions a causal LM takes loss on: HF models shift labels left by one, so the
    first label of each row is never predicted."""
    return int((batch["labels"][:, 1:] != ignore_index).sum())
