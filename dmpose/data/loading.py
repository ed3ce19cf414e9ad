"""A DataLoader whose sample errors reach the caller as themselves.

torch re-raises an exception from a worker process as "Caught ValueError in DataLoader worker process 0"
followed by the worker's traceback, so the same bad image reads differently with --workers 0 and 2.
Here every sample is loaded inside a guard that returns the exception as a value; the batch that holds
it is handed over as that exception, and the main process raises it: one clear message (the dataset's
own, naming the file), the same for any number of workers.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from typing import Any

import torch.utils.data
from torch.utils.data import Dataset, default_collate, get_worker_info

__all__ = ["DataLoader", "SampleError"]


class SampleError:
    """An exception raised while loading a sample, carried as a value across the worker boundary."""

    def __init__(self, error: Exception):
        if get_worker_info() is not None:  # it must survive pickling back to the main process
            try:
                pickle.loads(pickle.dumps(error))
            except Exception:  # noqa: BLE001
                error = RuntimeError(f"{type(error).__name__}: {error}")
        self.error = error


class _Guarded(Dataset):
    def __init__(self, dataset: Dataset):
        self.inner = dataset

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index):
        try:
            return self.inner[index]
        except Exception as exc:  # noqa: BLE001  (re-raised unchanged by DataLoader.__iter__)
            return SampleError(exc)

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def _guarded_collate(collate: Callable) -> Callable:
    def collate_fn(samples):
        for s in samples:
            if isinstance(s, SampleError):
                return s
        return collate(samples)

    return collate_fn


class DataLoader(torch.utils.data.DataLoader):
    """`torch.utils.data.DataLoader` (same arguments) that raises a sample's own exception in the main
    process, whatever `num_workers` is. Only map-style datasets with automatic batching are guarded."""

    def __init__(self, dataset: Dataset, *args, collate_fn: Callable | None = None, **kwargs):
        super().__init__(_Guarded(dataset), *args, collate_fn=_guarded_collate(collate_fn or default_collate),
                         **kwargs)

    def __iter__(self) -> Iterator:
        for batch in super().__iter__():
            if isinstance(batch, SampleError):
                raise batch.error
            yield batch
