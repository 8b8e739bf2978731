"""Bytes to tensors: safe image loading, folder scanning and dataset readers."""
