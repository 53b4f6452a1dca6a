import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gradaccum.data.collate import collate, count_loss_tokens


@st.composite
def samples(draw):
    out = []
    for _ in range(draw(st.integers(1, 8))):
        n = draw(st.integers(1, 24))
        ids = draw(st.lists(st.integers(0, 1000), min_size=n, max_size=n))
        masked = draw(st.lists(st.booleans(), min_size=n, max_size=n))
        out.append({"input_ids": ids, "labels": [-100 if m else t for t, m in zip(ids, masked)]})
    return out


@settings(deadline=None)
@given(batch_samples=samples(), pad_id=st.integers(0, 5))
def test_collate_right_pads_and_count_matches_brute_force(batch_samples, pad_id):
    batch = collate(batch_samples, pad_id)
    longest = max(len(s["input_ids"]) for s in batch_samples)
    for key in ("input_ids", "attention_mask", "labels"):
        assert batch[key].shape == (len(batch_samples), longest)
        assert batch[key].dtype == torch.long
    for row, sample in enumerate(batch_samples):
        n = len(sample["input_ids"])
        assert batch["input_ids"][row, :n].tolist() == sample["input_ids"]
        assert batch["labels"][row, :n].tolist() == sample["labels"]
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (longest - n)
        assert batch["input_ids"][row, n:].eq(pad_id).all()
        assert batch["labels"][row, n:].eq(-100).all()
    expected = sum(label != -100 for s in batch_samples for label in s["labels"][1:])
    assert count_loss_tokens(batch) == expected


def test_count_matches_the_positions_hf_causal_lm_loss_uses():
    rows = [{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [1], "labels": [1]}]
    batch = collate(rows, pad_id=0)
    logits = torch.randn(2, 3, 10)
    shift_labels = batch["labels"][:, 1:]
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 10), shift_labels.reshape(-1), reduction="sum"
    )
    per_token = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 10), shift_labels.reshape(-1), reduction="mean"
    )
    assert count_loss_tokens(batch) == 2
    assert torch.allclose(loss / count_loss_tokens(batch), per_token)


def test_empty_batch_is_rejected():
    with pytest.raises(ValueError):
        collate([], pad_id=0)
