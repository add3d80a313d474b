"""Whole-batch image augmentation on tensors (any device), with no per-sample Python loop.

All functions take a batch ``images`` of shape ``(B, C, H, W)``. The crop/flip functions keep the
dtype (use them on ``uint8`` before conversion, so the padding is black exactly as with
``torchvision.transforms.RandomCrop(padding=p)`` on a PIL image, fill 0); :func:`to_float_normalized`
turns ``uint8`` in ``[0, 255]`` into normalised ``float32``.

Randomness comes from a CPU ``generator``: the few numbers a batch needs (``3 B``) are drawn on the
CPU and moved to the batch's device, so a seed gives the same crops and flips on every device.
:class:`BatchAugment` seeds one generator per batch from the batch's seed (see
:mod:`crnn.data.sampling`) and never touches torch's global generator.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "BatchAugment",
    "crop_flip",
    "random_crop_flip",
    "to_float_normalized",
]


def crop_flip(
    images: torch.Tensor,
    offset_y: torch.Tensor,
    offset_x: torch.Tensor,
    flip: torch.Tensor | None = None,
    padding: int = 4,
) -> torch.Tensor:
    """Per-sample crop of a zero-padded batch, optionally mirrored, as one ``gather``.

    Sample ``b`` of the result is ``pad(images[b], padding)[:, oy:oy+H, ox:ox+W]`` with
    ``oy = offset_y[b]``, ``ox = offset_x[b]``, flipped left-right where ``flip[b]`` is true.

    Args:
        images: ``(B, C, H, W)``, any dtype.
        offset_y, offset_x: ``(B,)`` integer offsets into the padded image, in ``[0, 2 * padding]``.
        flip: ``(B,)`` bool, or ``None`` for no flips.
        padding: zero padding on each side.

    Returns:
        ``(B, C, H, W)``, same dtype and device as ``images``.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding)) if padding > 0 else images
    wp = w + 2 * padding
    dev = images.device
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    rows = offset_y.to(dev).long()[:, None] + ar_h  # (B, H)
    cols_rel = ar_w.expand(b, w)
    if flip is not None:
        cols_rel = torch.where(flip.to(dev)[:, None], (w - 1) - ar_w, ar_w)
    cols = offset_x.to(dev).long()[:, None] + cols_rel  # (B, W)
    index = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
    out = padded.reshape(b, c, -1).gather(2, index)
    return out.view(b, c, h, w)


def random_crop_flip(
    images: torch.Tensor,
    padding: int = 4,
    crop: bool = True,
    flip: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random crop with ``padding`` zero pixels per side (offsets uniform in ``[0, 2*padding]``,
    independently per sample) and random horizontal flip (probability 1/2 per sample).

    The same distribution as ``RandomCrop(H, padding=padding)`` followed by ``RandomHorizontalFlip()``.

    Args:
        images: ``(B, C, H, W)``, any dtype (normally ``uint8``).
        padding: pixels of zero padding per side for the crop.
        crop: draw random crops (else offsets are ``padding``: the identity).
        flip: draw random flips.
        generator: a CPU generator; ``None``: torch's global CPU generator.

    Returns:
        ``(B, C, H, W)``, same dtype and device.
    """
    b = images.shape[0]
    dev = images.device
    if not crop:
        padding = 0
    if padding > 0:
        oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
        ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    else:
        oy = ox = torch.zeros(b, dtype=torch.long)
    f = torch.rand(b, generator=generator) < 0.5 if flip else None
    if padding == 0 and f is None:
        return images
    return crop_flip(images, oy.to(dev), ox.to(dev), None if f is None else f.to(dev), padding)


def to_float_normalized(
    images: torch.Tensor,
    mean: torch.Tensor | Sequence[float] | None,
    std: torch.Tensor | Sequence[float] | None,
) -> torch.Tensor:
    """``uint8`` ``(B, C, H, W)`` in ``[0, 255]`` -> ``float32`` ``(x / 255 - mean) / std`` per channel.

    With ``mean``/``std`` ``None`` the result is ``x / 255`` in ``[0, 1]``.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 image batch, got {images.dtype}")
    x = images.to(torch.float32)
    if mean is None or std is None:
        return x.div_(255.0)
    c = images.shape[1]
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=images.device).reshape(1, c, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=images.device).reshape(1, c, 1, 1)
    # (x/255 - m)/s == x * (1/(255 s)) + (-m/s), in place on the fresh float copy (faster on CPU
    # than one broadcasting addcmul).
    return x.mul_(1.0 / (255.0 * std_t)).add_(-mean_t / std_t)


class BatchAugment:
    """Training/evaluation batch transform: ``uint8 (B, C, H, W)`` -> normalised ``float32 (B, C, H, W)``.

    With a ``seed`` (training batches): random crop (``crop_padding`` zero pixels per side) and
    horizontal flip, each per sample and switchable, drawn from ``torch.Generator().manual_seed(seed)``,
    then normalisation. ``seed=None``: normalisation only. Per-channel ``mean``/``std`` tensors are
    cached per device.
    """

    def __init__(
        self,
        random_crop: bool = True,
        crop_padding: int = 4,
        horizontal_flip: bool = True,
        normalize: bool = True,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
    ):
        self.random_crop = bool(random_crop)
        self.crop_padding = int(crop_padding)
        self.horizontal_flip = bool(horizontal_flip)
        self.normalize = bool(normalize)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _scale_shift_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(1 / (255 std), -mean / std)``, each ``(1, C, 1, 1)`` float32 on ``device`` (cached)."""
        if device not in self._stats:
            kw = {"dtype": torch.float32, "device": device}
            mean = torch.tensor(self.mean, **kw).reshape(1, -1, 1, 1)
            std = torch.tensor(self.std, **kw).reshape(1, -1, 1, 1)
            self._stats[device] = (1.0 / (255.0 * std), -mean / std)
        return self._stats[device]

    def __call__(self, images: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        if seed is not None and (self.random_crop or self.horizontal_flip):
            images = random_crop_flip(
                images,
                padding=self.crop_padding,
                crop=self.random_crop,
                flip=self.horizontal_flip,
                generator=torch.Generator().manual_seed(int(seed)),
            )
        if not self.normalize:
            return to_float_normalized(images, None, None)
        if images.dtype != torch.uint8:
            raise TypeError(f"expected a uint8 image batch, got {images.dtype}")
        scale, shift = self._scale_shift_on(images.device)
        return images.to(torch.float32).mul_(scale).add_(shift)

    def __repr__(self) -> str:
        return (
            f"BatchAugment(random_crop={self.random_crop}, crop_padding={self.crop_padding}, "
            f"horizontal_flip={self.horizontal_flip}, normalize={self.normalize}, "
            f"mean={self.mean}, std={self.std})"
        )
