"""Reading and writing volumes with their geometry."""

from medzoo.io.readers import read_volume, write_volume
from medzoo.io.volume import Volume, make_affine

__all__ = ["Volume", "make_affine", "read_volume", "write_volume"]
