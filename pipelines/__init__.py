"""Streaming loaders over datagen stores (WebDataset tars and HDF5 shards) for any training code."""

from pipelines.dataset import VideoDataset
from pipelines.loader import make_loader

__all__ = ["VideoDataset", "make_loader"]
