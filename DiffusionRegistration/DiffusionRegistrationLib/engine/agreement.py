"""The agreement map: a local similarity between the fixed image and the registered (warped) moving image,
on the fixed grid, so that a reviewer sees where the alignment is doubtful. Higher means better agreement.

What is compared follows the run's similarity:
- diffusion: local NCC of the backbone's feature maps (Gaussian window of the similarity's sigma in
  feature pixels, 4 by default as in the paper), averaged over channels; volumes slice by slice along
  their first array axis; interpolated back to the image grid;
- a same-contrast similarity (the registry says which): local NCC of the intensities (Gaussian window of the lncc sigma,
  2 voxels by default);
- any other (different contrasts, which may be inverted): the absolute local NCC.
Images are normalised to [0, 1] as the registration does (0.5 and 99.5 percentiles); flat regions,
where no window has contrast, read about 0.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..core.image import Image
from ..similarity.local_ncc import gaussian_window, local_ncc
from ..similarity.registry import same_contrast
from ..io.images import normalize
from .device import resolve_device

EPS = 1e-4  # variance floor for images in [0, 1]
INTENSITY_SIGMA = 2.0
FEATURE_SIGMA = 4.0
SLICES = 8  # slices of a volume sent through the diffusion network at a time


def _local_ncc(fixed: torch.Tensor, warped: torch.Tensor, sigma: float, eps: float = EPS) -> torch.Tensor:
    """Local NCC per channel of two [B, C, *spatial] tensors in a Gaussian window of `sigma` voxels."""
    return local_ncc(fixed, warped, gaussian_window(sigma, fixed.dim() - 2, fixed), eps)


def _tensor(image: Image) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(normalize(image).array), dtype=torch.float32)


def _feature_agreement(fixed: torch.Tensor, warped: torch.Tensor, params: dict[str, Any],
                       device: torch.device) -> torch.Tensor:
    """Feature LNCC of two [*spatial] images on their grid (2D, or 3D slice by slice, SLICES at a time so
    that the feature maps of a whole volume never sit in memory together)."""
    from ..similarity.registry import build_similarity

    similarity = build_similarity("diffusion", **params)
    extractor = similarity.extractor_for(fixed.dim(), device)
    sigma = similarity.sigma or FEATURE_SIGMA
    planes_f, planes_w = (image[None, None] if image.dim() == 2 else image[:, None] for image in (fixed, warped))
    maps = []
    with torch.inference_mode():
        for start in range(0, planes_f.shape[0], SLICES):
            f, w = (extractor(p[start:start + SLICES].to(extractor.device)).float().cpu() for p in (planes_f, planes_w))
            local = _local_ncc(f, w, sigma, similarity.eps).mean(1, keepdim=True)
            maps.append(F.interpolate(local, size=planes_f.shape[-2:], mode="bilinear", align_corners=False)[:, 0])
    local = torch.cat(maps)
    return local[0] if fixed.dim() == 2 else local


def agreement_map(fixed: Image, warped: Image, config: dict[str, Any]) -> Image:
    """The agreement of `fixed` and `warped` (the moving image resampled on the fixed grid) for a run with
    `config` (a RegistrationConfig as a dict), as a float32 image on the fixed grid."""
    name = config.get("similarity", "lncc")
    params = dict(config.get("similarity_params") or {})
    f, w = _tensor(fixed), _tensor(warped).reshape(fixed.array.shape)
    if name == "diffusion":
        values = _feature_agreement(f, w, params, resolve_device(config.get("device", "auto")))
    else:
        sigma = params.get("sigma", INTENSITY_SIGMA) if name == "lncc" else INTENSITY_SIGMA
        values = _local_ncc(f[None, None], w[None, None], sigma)[0, 0]
        if not same_contrast(name):
            values = values.abs()
    return Image(values.numpy().astype(np.float32), fixed.grid)
