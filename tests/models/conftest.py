"""Offline, isolated model tests: no hub access, and a fresh gradaccum cache per test."""

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported by any test module


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point GRADACCUM_CACHE at a per-test folder so tests never share converted models."""
    cache = tmp_path / "gradaccum-cache"
    monkeypatch.setenv("GRADACCUM_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache
