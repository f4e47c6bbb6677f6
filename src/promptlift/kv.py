"""Key/value caches as plain tensors.

transformers changes its cache classes often (tuples, `DynamicCache` with
`key_cache` lists, then `layers[i].keys`...). promptlift keeps its own tiny
representation, `KV`, and converts at the one boundary where a model is called
(`to_hf` / `from_hf`). Nothing else in the package touches a transformers cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass
class KV:
    """Per-layer keys and values plus a padding mask.

    keys[i], values[i]: (batch, kv_heads, seq, head_dim)
    mask: (batch, seq) with 1 for real positions, 0 for padding.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    mask: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.mask.shape[0]

    @property
    def seq_len(self) -> int:
        return self.mask.shape[1]

    @property
    def num_layers(self) -> int:
        return len(self.keys)

    def real_lengths(self) -> torch.Tensor:
        """(batch,) number of real (unpadded) positions per row."""
        return self.mask.sum(dim=1)

    def expand(self, batch_size: int) -> "KV":
        """Broadcast a batch-1 cache to `batch_size` rows without copying."""
        assert self.batch_size == 1, "expand() takes a batch-1 cache"
        return KV(
            [k.expand(batch_size, -1, -1, -1) for k in self.keys],
            [v.expand(batch_size, -1, -1, -1) for v in self.values],
            self.mask.expand(batch_size, -1),
        )

    def select(self, rows: torch.Tensor) -> "KV":
        """Rows `rows` (a (n,) long tensor; repeats allowed)."""
        return KV(
            [k.index_select(0, rows) for k in self.keys],
            [v.index_select(0, rows) for v in self.values],
            self.mask.index_select(0, rows),
        )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "KV":
        """Keys/values on `device` and in `dtype` (the mask only moves); self when nothing changes.

        Differentiable: gradients flow back to the original tensors.
        """
        if not self.keys:
            return self if device is None else KV(self.keys, self.values, self.mask.to(device))
        k0 = self.keys[0]
        same_dev = device is None or k0.device == torch.device(device)
        same_dtype = dtype is None or k0.dtype == dtype
        if same_dev and same_dtype and self.mask.device == k0.device:
            return self
        return KV([k.to(device, dtype) for k in self.keys], [v.to(device, dtype) for v in self.values],
                  self.mask.to(device if device is not None else k0.device))

    def cat(self, other: "KV") -> "KV":
        """Concatenate along the sequence: self's positions, then other's (moved to self's device and dtype)."""
        if self.keys and other.keys:
            other = other.to(self.keys[0].device, self.keys[0].dtype)
        b = max(self.batch_size, other.batch_size)
        a = self.expand(b) if self.batch_size == 1 and b > 1 else self
        o = other.expand(b) if other.batch_size == 1 and b > 1 else other
        return KV(
            [torch.cat([x, y], dim=2) for x, y in zip(a.keys, o.keys)],
            [torch.cat([x, y], dim=2) for x, y in zip(a.values, o.values)],
            torch.cat([a.mask, o.mask], dim=1),
        )

    def detach(self) -> "KV":
        return KV([k.detach() for k in self.keys], [v.detach() for v in self.values], self.mask)

    def to_hf(self):
        """A fresh transformers DynamicCache holding these tensors (the model appends to it)."""
        from transformers import DynamicCache

        cache = DynamicCache()
        for i, (k, v) in enumerate(zip(self.keys, self.values)):
            cache.update(k, v, i)
        return cache

    @staticmethod
    def from_hf(cache, mask: torch.Tensor) -> "KV":
        """Read a transformers cache (any version's layout) back into a KV."""
        if hasattr(cache, "layers"):  # transformers >= 4.56
            keys = [layer.keys for layer in cache.layers]
            values = [layer.values for layer in cache.layers]
        elif hasattr(cache, "key_cache"):  # older DynamicCache
            keys, values = list(cache.key_cache), list(cache.value_cache)
        else:  # legacy tuple of (k, v)
            keys = [kv[0] for kv in cache]
            values = [kv[1] for kv in cache]
        return KV(keys, values, mask)


def merge_prefixes(prefixes: Sequence[KV | None]) -> KV | None:
    """One batch cache from per-row batch-1 caches of different lengths (right-padded, masked out).

    The decoder gives every row positions from its own real length, so a padded
    row reads exactly what it reads alone.
    """
    real = [p for p in prefixes if p is not None and p.seq_len > 0]
    if not real:
        return None
    ref = real[0]
    L = max(p.seq_len for p in real)
    n_layers = ref.num_layers
    keys: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
    values: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
    masks = []
    for p in prefixes:
        n = p.seq_len if p is not None else 0
        for i in range(n_layers):
            k0, v0 = ref.keys[i], ref.values[i]
            if n:
                k, v = p.keys[i], p.values[i]
            else:
                k, v = k0[:, :, :0], v0[:, :, :0]
            if n < L:
                k = torch.cat([k, k0.new_zeros(1, k0.shape[1], L - n, k0.shape[3])], dim=2)
                v = torch.cat([v, v0.new_zeros(1, v0.shape[1], L - n, v0.shape[3])], dim=2)
            keys[i].append(k)
            values[i].append(v)
        m = torch.zeros(1, L, dtype=torch.long, device=ref.mask.device)
        if n:
            m[:, :n] = p.mask.to(m.device)
        masks.append(m)
    return KV([torch.cat(k, 0) for k in keys], [torch.cat(v, 0) for v in values], torch.cat(masks, 0))
