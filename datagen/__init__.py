"""Make the classic unsupervised-video datasets and store them as sharded, verifiable stores."""

__version__ = "0.1.0"
