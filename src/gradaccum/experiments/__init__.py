"""Reproduction experiments: a paper's setting at small scale, one command each."""
