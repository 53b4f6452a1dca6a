"""Test-wide settings: never reach a model hub."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported by any test module
