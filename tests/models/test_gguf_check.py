from pathlib import Path

import pytest

from gradaccum.errors import UserError
from gradaccum.models.gguf_check import check_gguf
from gradaccum.models.random_folder import build_random_model

from .gguf_writer import write_qwen2_gguf


@pytest.fixture
def gguf_bytes(tmp_path: Path) -> bytes:
    model, tokenizer = build_random_model("qwen2.5")
    return write_qwen2_gguf(model, tokenizer, tmp_path / "model.gguf").read_bytes()


def test_a_complete_file_passes(gguf_bytes: bytes, tmp_path: Path) -> None:
    path = tmp_path / "ok.gguf"
    path.write_bytes(gguf_bytes)
    check_gguf(path)


@pytest.mark.parametrize("keep", [0.0, 0.00001, 0.001, 0.02, 0.5, 0.9999])
def test_a_truncated_file_is_a_user_error_naming_it(
    gguf_bytes: bytes, tmp_path: Path, keep: float
) -> None:
    path = tmp_path / "cut.gguf"
    path.write_bytes(gguf_bytes[: int(len(gguf_bytes) * keep)])
    with pytest.raises(UserError, match="re-download or re-assemble it") as error:
        check_gguf(path)
    assert str(path) in str(error.value)
    assert "truncated or corrupt" in str(error.value)


def test_a_file_that_is_not_gguf_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.gguf"
    path.write_text("not a model\n" * 100)
    with pytest.raises(UserError, match="is not a valid GGUF file"):
        check_gguf(path)
