"""Streaming loaders over datagen stores (WebDataset tars and HDF5 shards) for any training code."""

from pipelines.dataset import VideoDataset
from pipelines.loader import make_loader
from pipelines.mix import MixedDataset, mix

__all__ = ["MixedDataset", "VideoDataset", "make_loader", "mix"]
