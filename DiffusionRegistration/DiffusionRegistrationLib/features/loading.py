"""Builds a feature extractor from a spec dict: {"backbone": name, ...options}.

`load_extractor({"backbone": "adm", "checkpoint": path})` loads the paper's network (defaults for 2D
or 3D from `dim` unless "tap" / "timestep" are given). Each backbone is one branch below, three lines:
the name, the import, the call with the remaining options.
"""
from __future__ import annotations

from typing import Any

from ..errors import RegistrationError
from .base import FeatureExtractor

#: backbones load_extractor knows (for messages); add a name here with its branch
BACKBONES = ("adm", "adm-small-random", "sd", "unet2d")


def _build(backbone: str, options: dict[str, Any], dim: int) -> FeatureExtractor:
    if backbone == "adm":
        from .adm_extractor import AdmExtractor
        return AdmExtractor.from_checkpoint(options.pop("checkpoint"), dim=dim, **options)
    if backbone == "adm-small-random":  # random weights: tests and benchmarks only
        from .adm_extractor import AdmExtractor
        return AdmExtractor.random(seed=options.pop("seed", 0), dim=dim, **options)
    if backbone == "sd":  # "model": a diffusers Stable Diffusion folder or a catalog id
        from .sd_extractor import StableDiffusionExtractor
        return StableDiffusionExtractor.from_pretrained(options.pop("model", None), **options)
    if backbone == "unet2d":  # "model": a diffusers UNet2DModel folder or a catalog id
        from .unet2d_extractor import PixelUNetExtractor
        return PixelUNetExtractor.from_pretrained(options.pop("model", None), **options)
    from .catalog import is_catalog_id
    from .weights import extractor_spec
    if is_catalog_id(backbone):  # a catalog id: its verified weights and defaults, then the options given
        resolved = extractor_spec(backbone, dim)
        if resolved["backbone"] == backbone:  # a builtin backbone (image, mind): no network to load here
            raise RegistrationError(f"'{backbone}' is a built-in backbone of the diffusion similarity: use it "
                                    f"as --similarity diffusion --backbone {backbone}.")
        return _build(resolved.pop("backbone"), {**resolved, **options}, dim)
    raise RegistrationError(f"unknown feature backbone '{backbone}'. Choose one of: {', '.join(BACKBONES)}.")


def load_extractor(spec: dict[str, Any], dim: int = 2) -> FeatureExtractor:
    """spec {"backbone": ..., options} -> a frozen FeatureExtractor; `dim` (2 or 3) picks default taps."""
    if isinstance(spec, FeatureExtractor):
        return spec
    if not isinstance(spec, dict) or "backbone" not in spec:
        raise RegistrationError(f"feature extractor spec {spec!r}: give a dict with a 'backbone' "
                                f"({', '.join(BACKBONES)}) and its options.")
    options = {k: v for k, v in spec.items() if k != "backbone"}
    if spec["backbone"] == "adm" and "checkpoint" not in options:
        raise RegistrationError("backbone 'adm' needs 'checkpoint': the path of 256x256_diffusion_uncond.pt.")
    dtype = options.get("compute_dtype")
    if isinstance(dtype, str):
        import torch
        options["compute_dtype"] = {"float16": torch.float16, "bfloat16": torch.bfloat16,
                                    "float32": None, "none": None}.get(dtype.lower(), dtype)
    try:
        return _build(str(spec["backbone"]), options, int(dim))
    except TypeError as error:
        raise RegistrationError(f"feature backbone '{spec['backbone']}': bad options "
                                f"{sorted(options)} ({error}).") from None
