"""Per-sample separable linear image operators, applied to a batch as two small matrix products.

A crop followed by a resize, a horizontal flip and a Gaussian blur are each a (rows x rows) matrix
on one side of the image and a (columns x columns) one on the other, different for every sample.
Building these matrices is cheap and applying them is two batched products, on any device.

Written here because no library does this per sample with PIL's filter: torchvision's resized_crop
and kornia's crop_and_resize take one box per call or sample bilinearly (grid_sample, roi_align),
and neither reproduces PIL's antialiased bicubic, which the PIL path of RandomResizedCrop uses.
"""

from __future__ import annotations

import torch

_BICUBIC_A = -0.5  # Pillow's bicubic filter coefficient (not PyTorch's -0.75)


def _bicubic(x: torch.Tensor) -> torch.Tensor:
    x = x.abs()
    near = ((_BICUBIC_A + 2) * x - (_BICUBIC_A + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * _BICUBIC_A
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def crop_resize_matrix(start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int,
                       flip: torch.Tensor | None = None) -> torch.Tensor:
    """(B, out_size, in_size) weights that take pixels [start, start + length) of a line to
    `out_size` pixels as Pillow's bicubic resize of the cropped image does, mirrored where `flip`.

    As in Pillow: output pixel o samples the crop at (o + 0.5) * scale; the filter widens by the
    scale when shrinking (antialiasing); taps outside the crop are dropped and the rest renormalised.
    `start`, `length`, `flip`: (B,) tensors on the target device.
    """
    # windows of in_size columns of the table: window w holds a crop starting at pixel in_size - w
    windows = _resize_table(in_size, out_size, start.device).unfold(2, in_size, 1)
    outputs = torch.arange(out_size, device=start.device).expand(len(start), out_size)
    if flip is not None:
        outputs = torch.where(flip[:, None], out_size - 1 - outputs, outputs)
    return windows[length.long()[:, None], outputs, (in_size - start.long())[:, None]]


_TABLES: dict[tuple[int, int, str], torch.Tensor] = {}


def _resize_table(in_size: int, out_size: int, device: torch.device) -> torch.Tensor:
    """Pillow's bicubic weights of every crop length 0..in_size, each padded by in_size zeros on the
    left: a batch's matrices are then one gather (computing them per batch is 30x slower)."""
    key = (in_size, out_size, str(device))
    if key not in _TABLES:
        lengths = torch.arange(in_size + 1, dtype=torch.float64)
        weights = _pillow_weights(lengths, in_size, out_size)  # (in + 1, out, in)
        padded = torch.zeros(in_size + 1, out_size, 2 * in_size, dtype=torch.float32)
        padded[:, :, in_size:] = weights
        _TABLES[key] = padded.to(device)
    return _TABLES[key]


def _pillow_weights(length: torch.Tensor, in_size: int, out_size: int) -> torch.Tensor:
    """(L, out_size, in_size) bicubic weights of crops starting at pixel 0, of `length` (L,) pixels."""
    length = length[:, None, None]
    scale = length / out_size
    filter_scale = scale.clamp(min=1.0)
    support = 2.0 * filter_scale
    centre = (torch.arange(out_size, dtype=torch.float64)[None, :, None] + 0.5) * scale
    tap = torch.arange(in_size, dtype=torch.float64)[None, None, :]
    first = torch.floor(centre - support + 0.5).clamp(min=0)
    last = torch.minimum(torch.floor(centre + support + 0.5), length)
    weights = _bicubic((tap - centre + 0.5) / filter_scale)
    weights = torch.where((tap >= first) & (tap < last), weights, torch.zeros_like(weights))
    total = weights.sum(-1, keepdim=True)
    return (weights / torch.where(total == 0, torch.ones_like(total), total)).float()


def gaussian_blur_matrix(sigma: torch.Tensor, kernel: int, size: int) -> torch.Tensor:
    """(B, size, size): a 1-D Gaussian blur of odd `kernel` taps with per-sample `sigma` (B,),
    normalised over the kernel and reflect-padded, as torchvision's gaussian_blur."""
    radius = kernel // 2
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=sigma.device)
    taps = torch.exp(-0.5 * (offsets[None, :] / sigma.float()[:, None]) ** 2)
    taps = taps / taps.sum(-1, keepdim=True)  # (B, kernel)
    source = torch.arange(size, device=sigma.device)[:, None] + offsets.long()[None, :]  # (size, kernel)
    source = source.abs()  # reflect at 0: -1 -> 1
    source = torch.where(source > size - 1, 2 * (size - 1) - source, source)  # reflect at the end
    flat = (torch.arange(size, device=sigma.device)[:, None] * size + source).reshape(1, -1)  # (1, size*kernel)
    values = taps[:, None, :].expand(-1, size, -1).reshape(len(sigma), -1)
    matrix = torch.zeros(len(sigma), size * size, device=sigma.device)
    matrix.scatter_add_(1, flat.expand(len(sigma), -1), values)  # reflected taps can meet: add them
    return matrix.view(len(sigma), size, size)


def apply_separable(images: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor,
                    rows_first: torch.Tensor | None = None, clamp: float | None = None) -> torch.Tensor:
    """out[b, c] = rows[b] @ images[b, c] @ columns[b].T for images (B, C, H, W), rows (B, H', H),
    columns (B, W', W).

    `clamp` clips the intermediate and the result to [0, clamp], as Pillow clips each pass to 8 bits;
    then the order of the passes matters, and `rows_first` (B,) bool picks it per sample.
    """
    if rows_first is None or not bool(rows_first.any()):
        return _columns_then_rows(images, rows, columns, clamp)
    if bool(rows_first.all()):
        return _rows_then_columns(images, rows, columns, clamp)
    out = images.new_empty(len(images), images.shape[1], rows.shape[1], columns.shape[1])
    first, second = rows_first.nonzero().squeeze(1), (~rows_first).nonzero().squeeze(1)
    for chosen, passes in ((first, _rows_then_columns), (second, _columns_then_rows)):
        part = [t.index_select(0, chosen) for t in (images, rows, columns)]
        out.index_copy_(0, chosen, passes(*part, clamp))
    return out


def _columns_then_rows(images, rows, columns, clamp):
    across = _clip(torch.einsum("bchw,bjw->bchj", images, columns), clamp)
    return _clip(torch.einsum("bih,bchj->bcij", rows, across), clamp)


def _rows_then_columns(images, rows, columns, clamp):
    down = _clip(torch.einsum("bih,bchw->bciw", rows, images), clamp)
    return _clip(torch.einsum("bciw,bjw->bcij", down, columns), clamp)


def _clip(x: torch.Tensor, bound: float | None) -> torch.Tensor:
    return x if bound is None else x.clamp_(0.0, bound)
