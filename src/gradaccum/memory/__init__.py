"""Memory: measuring peaks, recognizing out-of-memory errors, sizing micro-batches, and
training under a budget (weight shards on disk, chunked loss, activation checkpointing)."""
