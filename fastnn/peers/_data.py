"""Data-set helpers of the peers: per-array caches, checked sample orders.

``PerArray`` keeps a value derived from a data set (its float copy, its
device copy) while the data set lives. A benchmark passes the same images
array to train_epoch again and again; a peer that converts it (to float, or
onto a device) does so once, as a user would before the training loop.
Entries are keyed by the array's identity (``id`` plus a weak reference that
confirms it is the same object and drops the entry when the array is
freed), never by content: a data set is taken as read-only, so an array
changed in place after its first use keeps its stale copy. A new array
object (a slice, a fancy-indexed copy) gets a new entry.
"""

from __future__ import annotations

import weakref

import numpy as np


class PerArray:
    """{(array, key): value}, an entry living as long as its array does."""

    def __init__(self):
        self._entries = {}  # (id(array), key) -> (weakref to array, value)

    def get(self, array, key, make):
        """The value cached for (array, key), or make() stored for next time."""
        slot = (id(array), key)
        entry = self._entries.get(slot)
        if entry is not None and entry[0]() is array:
            return entry[1]
        value = make()
        # The callback runs when the array is freed, before its id can be reused.
        ref = weakref.ref(array, lambda _, slot=slot: self._entries.pop(slot, None))
        self._entries[slot] = (ref, value)
        return value

    def __len__(self):
        return len(self._entries)

    def clear(self):
        self._entries.clear()


def checked_order(order, n, dtype=np.intp):
    """order (k,) sample indices as ``dtype``, each checked to lie in [-n, n), numpy's
    indexing range (a gather that clips or wraps would not raise on its own)."""
    order = np.asarray(order)
    if order.size and (order.min() < -n or order.max() >= n):
        raise IndexError(f"sample index out of range for {n} images")
    return order.astype(dtype, copy=False)
