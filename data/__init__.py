"""Bytes to tensors: safe image loading, folder scanning and dataset readers."""

from lookalike.data.datasets import create_dataset as create_dataset
from lookalike.data.datasets import list_datasets as list_datasets
from lookalike.data.images import ImageDecodeError as ImageDecodeError
from lookalike.data.images import open_image as open_image
