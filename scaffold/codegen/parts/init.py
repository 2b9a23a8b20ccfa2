"""Initialisation parts."""

import math

import torch


@torch.no_grad()
def truncated_normal_(tensor: torch.Tensor, std: float, bound: float = 3.0) -> torch.Tensor:
    """Fill ``tensor`` in place from N(0, std^2) truncated to +-bound*std, by inverse transform sampling.

    As fast as ``normal_`` (torch's ``trunc_normal_`` resamples and is several times slower on large
    matrices). A tensor transformers has already loaded (``_is_hf_initialized``) is left alone, as
    ``transformers.initialization`` does.
    """
    if getattr(tensor, "_is_hf_initialized", False):
        return tensor
    edge = math.erf(bound / math.sqrt(2))  # the truncation points, mapped through the normal CDF to (-1, 1)
    return tensor.uniform_(-edge, edge).erfinv_().mul_(std * math.sqrt(2)).clamp_(-bound * std, bound * std)
