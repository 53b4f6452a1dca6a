import os
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from gradaccum.errors import UserError
from gradaccum.models import gguf_cache
from gradaccum.models.configs import FAMILIES
from gradaccum.models.gguf_cache import default_gemma_gguf
from gradaccum.models.load import load_model
from gradaccum.models.random_folder import make_random_model_folder

MODEL_TYPES = {"gpt2": "gpt2", "gemma3": "gemma3_text", "qwen2.5": "qwen2"}


@pytest.mark.parametrize("family", FAMILIES)
def test_random_spec_gives_a_tiny_model_with_its_tokenizer(family: str) -> None:
    loaded = load_model(f"random:{family}")
    assert loaded.family == MODEL_TYPES[family]
    assert loaded.max_length == 512
    assert len(loaded.tokenizer) == loaded.model.config.vocab_size == 512
    assert loaded.source == f"random {family} (tiny, seed 0)"
    assert not loaded.model.training


def test_random_full_spec_has_the_real_shapes() -> None:
    loaded = load_model("random:gpt2-full")
    assert loaded.model.config.vocab_size == 50257
    assert loaded.max_length == 1024
    assert len(loaded.tokenizer) <= 50257


def test_dtype_applies_to_folders(tmp_path: Path) -> None:
    folder = make_random_model_folder("qwen2.5", tmp_path / "m")
    loaded = load_model(str(folder), dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}


def test_gemma3_trains_on_cpu_and_sdpa_matches_eager() -> None:
    sdpa = load_model("random:gemma3").model
    eager = load_model("random:gemma3", attn_implementation="eager").model
    ids = torch.randint(3, 512, (2, 40))  # longer than the sliding window of 16
    mask = torch.ones_like(ids)
    mask[1, :7] = 0  # left padding
    sdpa.train()
    loss = sdpa(input_ids=ids, attention_mask=mask, labels=ids).loss
    loss.backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in sdpa.parameters())
    with torch.no_grad():
        sdpa.eval()
        expected = eager(input_ids=ids, attention_mask=mask).logits
        actual = sdpa(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(actual[:, 7:], expected[:, 7:], atol=1e-5, rtol=1e-4)


def test_gpt2_folder_without_pad_token_pads_with_eos(tmp_path: Path) -> None:
    folder = make_random_model_folder("gpt2", tmp_path / "m")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(folder)
    assert load_model(str(folder)).tokenizer.pad_token == "<eos>"


def test_a_tokenizer_larger_than_the_embedding_is_a_user_error(tmp_path: Path) -> None:
    folder = make_random_model_folder("gpt2", tmp_path / "m")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_tokens(["<extra>"])
    tokenizer.save_pretrained(folder)
    with pytest.raises(UserError, match="has 513 tokens but the model embeds only 512"):
        load_model(str(folder))


def test_a_corrupt_tokenizer_config_is_a_user_error(tmp_path: Path) -> None:
    folder = make_random_model_folder("gpt2", tmp_path / "m")
    (folder / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot load the tokenizer"):
        load_model(str(folder))


def _folder_without(tmp_path: Path, *names: str) -> Path:
    folder = make_random_model_folder("gpt2", tmp_path / "m")
    for name in names:
        (folder / name).unlink()
    return folder


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("llama-7b", "unknown model 'llama-7b'"),
        ("random:llama", "unknown random model family 'llama'"),
        ("./nowhere/model", "does not exist"),
        ("nowhere.gguf", "does not exist"),
    ],
)
def test_bad_specs_are_user_errors_listing_the_accepted_forms(spec: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as error:
        load_model(spec)
    assert "random:<gpt2|gemma3|qwen2.5>" in str(error.value)
    assert "\n" not in str(error.value)


def test_a_plain_file_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"0")
    with pytest.raises(UserError, match="neither a model folder nor a .gguf file"):
        load_model(str(path))


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        (("config.json",), "has no config.json"),
        (("model.safetensors",), "has no \\*.safetensors weights"),
        (("tokenizer.json", "tokenizer_config.json"), "has no tokenizer"),
    ],
)
def test_incomplete_folders_are_user_errors(tmp_path: Path, missing: tuple, message: str) -> None:
    folder = _folder_without(tmp_path, *missing)
    with pytest.raises(UserError, match=message):
        load_model(str(folder))


def test_remote_code_never_runs_unless_asked(tmp_path: Path) -> None:
    folder = make_random_model_folder("gpt2", tmp_path / "m")
    sentinel = tmp_path / "code-ran"
    (folder / "configuration_evil.py").write_text(
        f"open({str(sentinel)!r}, 'w').close()\n"
        "from transformers import PretrainedConfig\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n"
    )
    config = (folder / "config.json").read_text()
    config = config.replace(
        '"model_type": "gpt2"',
        '"model_type": "evil", "auto_map": {"AutoConfig": "configuration_evil.EvilConfig"}',
    )
    (folder / "config.json").write_text(config)
    with pytest.raises(UserError, match="cannot read"):
        load_model(str(folder))
    assert not sentinel.exists()


@pytest.mark.slow
def test_packaged_gemma_loads_from_cache_with_the_gguf_logits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = Path(os.environ.get("GRADACCUM_TEST_CACHE", "/tmp/gradaccum-test-cache"))
    monkeypatch.setenv("GRADACCUM_CACHE", str(cache))
    load_model("gemma3-270m")  # converts on a cold cache (about a minute), else a cache hit
    gguf_cache._sha256.cache_clear()  # time the second load as a new process would see it

    start = time.perf_counter()
    loaded = load_model("gemma3-270m")
    assert time.perf_counter() - start < 15
    assert (loaded.family, loaded.max_length) == ("gemma3_text", 32768)

    gguf = default_gemma_gguf()
    fresh = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    text = "The capital of France is"
    ids = loaded.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(loaded.model(ids).logits, fresh.eval()(ids).logits)
    del fresh
    fresh_tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    sample = "def f(x):\n    return x  # Grüße 🙂"
    assert loaded.tokenizer(sample)["input_ids"] == fresh_tokenizer(sample)["input_ids"]
