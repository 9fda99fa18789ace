"""Spatial merging as a selector: visual tokens averaged in runs of neighbours instead of dropped."""

from __future__ import annotations

import torch

from corehead.attention.kv_cache import Buffer
from corehead.attention.selectors import SELECTORS, Selector


@SELECTORS.register("merge", order=1)
class Merge(Selector):
    """Each row's visual tokens averaged, in order, into as many runs as its budget keeps; text tokens alone.
    Merged tokens have no position, so the prefill option cannot use it."""

    keeps_tokens = False

    def keep(self, heads: list[int], count: int) -> Buffer:
        p = self.prefill
        slots = _merge_slots(p.visual, count)
        keys, values = _scatter_mean(p.key[:, heads], slots, count), _scatter_mean(p.value[:, heads], slots, count)
        valid = torch.zeros(p.key.shape[0], count, dtype=torch.bool, device=p.key.device)
        valid.scatter_reduce_(1, slots, p.valid, reduce="amax")
        return Buffer(heads, keys, values, valid, None)


def _merge_slots(visual: torch.Tensor, count: int) -> torch.Tensor:
    """[B, L] slot of each token: text tokens alone, visual tokens in runs of neighbours, `count` slots a row."""
    b, length = visual.shape
    slots = torch.empty(b, length, dtype=torch.long, device=visual.device)
    for r in range(b):
        n_text = int((~visual[r]).sum())
        n_vis = length - n_text
        groups = max(1, count - n_text)
        run = torch.div(torch.arange(n_vis, device=visual.device) * groups, max(1, n_vis), rounding_mode="floor")
        # slot order follows the first token of each slot: walk the row, opening a slot at each text token
        # and at each new visual run
        is_new = torch.ones(length, dtype=torch.bool, device=visual.device)
        vis_pos = torch.nonzero(visual[r]).flatten()
        if n_vis:
            is_new[vis_pos[1:]] = run[1:] != run[:-1]
            after_text = torch.zeros(n_vis, dtype=torch.bool, device=visual.device)
            after_text[1:] = vis_pos[1:] != vis_pos[:-1] + 1
            is_new[vis_pos[after_text]] = True
        row = torch.cumsum(is_new.long(), 0) - 1
        slots[r] = row.clamp(max=count - 1)
    return slots


def _scatter_mean(x: torch.Tensor, slots: torch.Tensor, count: int) -> torch.Tensor:
    """[B, n, L, D] averaged into [B, n, count, D] by slot."""
    index = slots[:, None, :, None].expand(-1, x.shape[1], -1, x.shape[-1])
    out = torch.zeros(*x.shape[:2], count, x.shape[-1], dtype=x.dtype, device=x.device)
    return out.scatter_reduce(2, index, x, reduce="mean", include_self=False)
