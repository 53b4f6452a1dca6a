"""gradaccum: exact, cheap and safe gradient accumulation for PyTorch."""
