"""Memory: measuring peaks, recognizing out-of-memory errors, sizing micro-batches."""
