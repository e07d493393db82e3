"""VoCo-LLaMA's compressed KV cache: what is left of a prompt once its images are sealed behind their VoCo tokens."""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicCache


class VoCoCache(DynamicCache):
    """A `DynamicCache` holding only the columns later tokens may still attend to (VoCo tokens and the text after
    them), left-aligned per row.

    It stands in for a prompt of `compressed_length` tokens, so `get_seq_length()` reports that *logical* length:
    `generate` then slices the prompt and continues position ids exactly as if the whole prompt were cached, while
    the attention only pays for the kept columns.

    Args:
        key_mask: (batch, kept) bool, False on the left padding of rows that kept fewer columns than others.
        compressed_length: length of the prompt this cache replaces (including its padding).
        prefix_ids: that prompt's ids, so a reused cache can check that a new prompt starts with them.
        rope_deltas: (batch,) what the position ids of every later token add to its count of real tokens: the
            positions compact video frames took back (0 without videos).
    """

    def __init__(self, key_values, key_mask: torch.Tensor, compressed_length: int, prefix_ids=None, rope_deltas=None):
        super().__init__(ddp_cache_data=key_values)
        self.key_mask = key_mask
        self.compressed_length = compressed_length
        self.prefix_ids = prefix_ids
        self.rope_deltas = (
            rope_deltas if rope_deltas is not None else key_mask.new_zeros(key_mask.shape[0], dtype=torch.long)
        )

    @classmethod
    def compress(
        cls,
        cache: Cache,
        keep: torch.Tensor,
        prefix_ids: torch.LongTensor | None = None,
        rope_deltas: torch.LongTensor | None = None,
    ) -> VoCoCache:
        """Keep the columns where `keep` (batch, length) is True, in order, left-padded to the longest row."""
        length = keep.shape[1]
        kept = int(keep.sum(-1).max())
        # A stable sort moves the kept columns to the end of each row without reordering them.
        order = torch.sort(keep.to(torch.int8), dim=-1, stable=True).indices[:, length - kept :]
        key_values = []
        for layer in cache.layers:
            index = order[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[-1])
            key_values.append((layer.keys.gather(2, index), layer.values.gather(2, index)))
        return cls(
            key_values, keep.gather(1, order), compressed_length=length, prefix_ids=prefix_ids, rope_deltas=rope_deltas
        )

    @classmethod
    def from_rows(
        cls,
        rows: list[list[tuple[torch.Tensor, torch.Tensor]]],
        compressed_length: int,
        prefix_ids: torch.LongTensor | None = None,
        rope_deltas: torch.LongTensor | None = None,
    ) -> VoCoCache:
        """Each row's kept columns (per layer (keys, values) of shape (1, heads, columns, head_dim)), in order, as
        `compress` lays them out: right-aligned, the shorter rows padded on the left."""
        kept = max(row[0][0].shape[2] for row in rows)

        def padded(tensor):
            return torch.nn.functional.pad(tensor, (0, 0, kept - tensor.shape[2], 0))

        key_values = [
            (torch.cat([padded(row[layer][0]) for row in rows]), torch.cat([padded(row[layer][1]) for row in rows]))
            for layer in range(len(rows[0]))
        ]
        counts = torch.tensor([row[0][0].shape[2] for row in rows], device=key_values[0][0].device)
        key_mask = torch.arange(kept, device=counts.device)[None, :] >= (kept - counts)[:, None]
        return cls(key_values, key_mask, compressed_length, prefix_ids=prefix_ids, rope_deltas=rope_deltas)

    @property
    def num_kept(self) -> int:
        """Columns held per row before any decoded token: the physical size of the compressed prompt."""
        return self.key_mask.shape[1]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """The logical length: compressed prompt as it was, plus everything appended since."""
        return super().get_seq_length(layer_idx) + self.compressed_length - self.num_kept

    def physical_length(self, layer_idx: int = 0) -> int:
        return super().get_seq_length(layer_idx)

    def key_padding_mask(self, attention_mask: torch.Tensor | None, batch_size: int, query_length: int):
        """(batch, physical past + query) bool of attendable keys, from a 2D mask over the *logical* sequence."""
        appended = self.physical_length() - self.num_kept + query_length
        if attention_mask is None:
            later = self.key_mask.new_ones(batch_size, appended)
        else:
            later = attention_mask[:, self.compressed_length :].bool()
            if later.shape[1] != appended:
                raise ValueError(
                    f"attention_mask covers {attention_mask.shape[1]} tokens but the cache and the input hold "
                    f"{self.get_seq_length() + query_length}; pass the mask of the whole (uncompressed) sequence."
                )
        return torch.cat([self.key_mask.to(later.device), later], dim=1)

    def reorder_cache(self, beam_idx: torch.LongTensor):
        super().reorder_cache(beam_idx)
        self.key_mask = self.key_mask.index_select(0, beam_idx.to(self.key_mask.device))
        self.rope_deltas = self.rope_deltas.index_select(0, beam_idx.to(self.rope_deltas.device))
        self.prefix_ids = None

    def batch_repeat_interleave(self, repeats: int):
        super().batch_repeat_interleave(repeats)
        self.key_mask = self.key_mask.repeat_interleave(repeats, dim=0)
        self.rope_deltas = self.rope_deltas.repeat_interleave(repeats, dim=0)
        if self.prefix_ids is not None:
            self.prefix_ids = self.prefix_ids.repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, indices: torch.Tensor):
        super().batch_select_indices(indices)
        self.key_mask = self.key_mask[indices]
        self.rope_deltas = self.rope_deltas[indices]
        if self.prefix_ids is not None:
            self.prefix_ids = self.prefix_ids[indices]

    def crop(self, *args, **kwargs):
        raise NotImplementedError("A VoCoCache cannot be cropped: its compressed prompt has no per-token layout.")
