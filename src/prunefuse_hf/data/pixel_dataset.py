"""Reading a pool's pixels: [`PixelDataset`], the rows of a pixel dataset (from
[`ImagePreprocessor.pixel_dataset`]) with their class ids, a whole batch at a time; a raw cache's rows are read as
zero-copy numpy views of its memory-mapped Arrow file."""

from __future__ import annotations

import copy

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from ..constants import LABELS, PIXEL_VALUES


class PixelDataset(torch.utils.data.Dataset):
    """
    Rows of a pixel dataset with their class ids, read a whole batch at a time.

    Args:
        pixels (`datasets.Dataset`): From [`ImagePreprocessor.pixel_dataset`].
        rows (`np.ndarray`): The rows (pool indices) this dataset exposes, in order.
        labels (`np.ndarray`, *optional*): Class id of each row of `rows`; without them only pixels are returned.
    """

    def __init__(self, pixels: datasets.Dataset, rows, labels=None):
        self.pixels = pixels
        # The cached pixels as numpy views of the memory-mapped Arrow file: a batch is one fancy-indexing copy,
        # where datasets' own row formatting would spend more time than a small model's forward pass.
        self._views = _uint8_views(pixels)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = None if labels is None else torch.tensor(np.asarray(labels, dtype=np.int64))
        if self.labels is not None and len(self.labels) != len(self.rows):
            raise ValueError(f"Got {len(self.labels)} labels for {len(self.rows)} rows.")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict]:
        # One Arrow read for the whole batch; the examples are views of it.
        pixel_values = self.batch(indices)
        if self.labels is None:
            return [{PIXEL_VALUES: p} for p in pixel_values]
        return [{PIXEL_VALUES: p, LABELS: y} for p, y in zip(pixel_values, self.labels[indices])]

    def select(self, positions) -> PixelDataset:
        """The examples at `positions` (of this dataset) as a new `PixelDataset` over the same pixels."""
        subset = copy.copy(self)
        positions = np.asarray(list(positions) if isinstance(positions, range) else positions, dtype=np.int64)
        subset.rows = self.rows[positions]
        subset.labels = None if self.labels is None else self.labels[torch.from_numpy(positions)]
        return subset

    @property
    def decodes_per_batch(self) -> bool:
        """Whether reading a batch decodes images (no cache, or a JPEG/PNG one) rather than copying raw pixels."""
        return self._views is None

    def batch(self, indices) -> torch.Tensor:
        """The `uint8` pixels of `indices` as one `[B, C, H, W]` tensor."""
        if self._views is not None:
            return torch.from_numpy(self._views.take(self.rows[np.asarray(indices, dtype=np.int64)]))
        pixel_values = self.pixels[self.rows[indices].tolist()][PIXEL_VALUES]
        if isinstance(pixel_values, torch.Tensor):
            return pixel_values
        return torch.from_numpy(np.ascontiguousarray(pixel_values, dtype=np.uint8))


class _ChunkViews:
    """Zero-copy numpy views `[n_i, C, H, W]` of the chunks of a fixed-shape uint8 Arrow column."""

    def __init__(self, views: list[np.ndarray]):
        self.views = views
        self.starts = np.cumsum([0] + [len(v) for v in views])

    def take(self, rows: np.ndarray) -> np.ndarray:
        if len(self.views) == 1:
            return self.views[0][rows]
        out = np.empty((len(rows), *self.views[0].shape[1:]), dtype=np.uint8)
        chunk = np.searchsorted(self.starts, rows, side="right") - 1
        for c in np.unique(chunk):
            mask = chunk == c
            out[mask] = self.views[c][rows[mask] - self.starts[c]]
        return out


def _uint8_views(pixels) -> _ChunkViews | None:
    """Views of a cached pixel dataset's column, or `None` when it is not plain cached uint8 Arrow data."""
    if (
        not isinstance(pixels, datasets.Dataset)
        or pixels._indices is not None
        or pixels.format["type"] != "numpy"
    ):
        return None
    feature = pixels.features.get(PIXEL_VALUES)
    if not isinstance(feature, datasets.Array3D) or feature.dtype != "uint8":
        return None
    shape = tuple(feature.shape)
    column = pixels.data.table.column(PIXEL_VALUES)
    # One cast and three flattens of the whole column in Arrow (per-chunk Python access would deserialize the
    # extension type of each chunk: 0.3 s for the 4,000 chunks of a 1M-image cache).
    storage = column.cast(column.type.storage_type) if isinstance(column.type, pa.ExtensionType) else column
    values = storage
    for _ in shape:
        values = pc.list_flatten(values)
    if values.num_chunks != storage.num_chunks:
        return None
    views = []
    for chunk, flat in zip(storage.chunks, values.chunks):
        if len(flat) != len(chunk) * int(np.prod(shape)):
            return None
        views.append(flat.to_numpy(zero_copy_only=True).reshape(len(chunk), *shape))
    return _ChunkViews(views) if views else None
