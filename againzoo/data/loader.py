"""A whole-dataset tensor loader: images stay uint8 on the training device (the GPU on CUDA) and
augmentation (pad-4 random crop, horizontal flip) runs there in batch, with no DataLoader workers.
The same code runs on CPU. Under data parallelism every rank draws the same order and the same
augmentation parameters for the whole global batch and keeps its own slice.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

AUGMENTATIONS = ("crop_flip", "flip", "none")


def random_crop_flip(x: torch.Tensor, pad: int = 4, flip: bool = True, crop: bool = True,
                     generator: torch.Generator | None = None, part: tuple[int, int] | None = None) -> torch.Tensor:
    """Per-sample random ``pad``-pixel translation (zero padding) and horizontal flip of a batch.

    ``part=(start, total)``: ``x`` is rows ``start:start + len(x)`` of a batch of ``total``; the
    random draws are made for the whole batch, so the slice is augmented as it would be there."""
    n, c, h, w = x.shape
    dev = x.device
    start, total = part if part is not None else (0, n)
    rows_of = slice(start, start + n)
    if crop and pad > 0:
        xp = F.pad(x, (pad, pad, pad, pad))
        off = torch.randint(0, 2 * pad + 1, (2, total), device=dev, generator=generator)[:, rows_of]
        rows = (off[0, :, None] + torch.arange(h, device=dev))[:, None, :, None].expand(n, c, h, w + 2 * pad)
        xp = xp.gather(2, rows)
        cols = (off[1, :, None] + torch.arange(w, device=dev))[:, None, None, :].expand(n, c, h, w)
        x = xp.gather(3, cols)
    if flip:
        mask = torch.rand(total, device=dev, generator=generator)[rows_of] < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


class TensorLoader:
    """Batches of float images in [0, 1] (NCHW) and labels from uint8 arrays held on ``device``.

    ``batch_size`` is the global batch; with ``world_size > 1`` this rank yields its slice
    ``rank * b:(rank + 1) * b`` (``b = batch_size // world_size``) of each global batch, and the
    last, partial global batch is dropped."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, device: torch.device | str = "cpu",
                 shuffle: bool = False, augment: str = "none", drop_last: bool = False, seed: int = 0,
                 channels_last: bool = False, rank: int = 0, world_size: int = 1):
        if augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} does not split evenly across {world_size} ranks")
        self.rank, self.world_size = rank, world_size
        drop_last = drop_last or world_size > 1
        self.device = torch.device(device)
        self.x = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).contiguous().to(self.device)
        self.y = torch.from_numpy(np.asarray(y, dtype=np.int64)).to(self.device)
        self.batch_size, self.shuffle, self.augment, self.drop_last = batch_size, shuffle, augment, drop_last
        self.channels_last = channels_last
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self.aug_generator = torch.Generator(device=self.device).manual_seed(seed + 1)

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.y)
        order = torch.randperm(n, generator=self.generator).to(self.device) if self.shuffle else None
        for i in range(len(self)):
            sl = slice(i * self.batch_size, min(n, (i + 1) * self.batch_size))
            idx = order[sl] if order is not None else torch.arange(sl.start, sl.stop, device=self.device)
            total = len(idx)
            local = total // self.world_size
            start = self.rank * local
            idx = idx[start:start + local]
            x = self.x[idx]
            if self.augment != "none":
                x = random_crop_flip(x, crop=self.augment == "crop_flip", generator=self.aug_generator,
                                     part=(start, total))
            x = x.float().div_(255)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.y[idx]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state(), "aug_generator": self.aug_generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"].cpu())
        self.aug_generator.set_state(state["aug_generator"].cpu())
