"""SeTok's parameter-free parts: the 2-D sin-cos position table and DPC-KNN clustering, batched over views."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def sincos_position_encoding_2d(height: int, width: int, channels: int, device=None) -> torch.Tensor:
    """The original's `PositionalEncoding2D` as a (height * width, channels) fp32 table in raster order.

    The first `ch = 2 * ceil(channels / 4)` dims encode the row, the next `ch` the column, sin/cos interleaved,
    frequencies 10000^(-2j / ch); the concatenation is cut to `channels`.
    """
    ch = 2 * math.ceil(channels / 4)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, ch, 2, device=device).float() / ch))

    def embed(length: int) -> torch.Tensor:
        angles = torch.arange(length, device=device).float()[:, None] * inv_freq
        return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)

    rows = embed(height)[:, None, :].expand(height, width, ch)
    columns = embed(width)[None, :, :].expand(height, width, ch)
    return torch.cat([rows, columns], dim=-1)[..., :channels].reshape(height * width, channels)


@dataclass
class DPCKNNClusters:
    """Clusters of a batch of views, padded to the largest cluster count `L` of the batch.

    labels: (views, patches) cluster id of every patch, -1 for masked patches that are left unassigned.
    centers: (views, L) patch index of each cluster's center, in raster order; padding slots hold 0.
    center_mask: (views, L) True where a cluster exists.
    num_tokens: (views,) clusters per view.
    scores: (views, patches) density x delta, the quantity thresholded.
    """

    labels: torch.LongTensor
    centers: torch.LongTensor
    center_mask: torch.BoolTensor
    num_tokens: torch.LongTensor
    scores: torch.Tensor


@torch.no_grad()
def dpc_knn_cluster(
    x: torch.Tensor,
    k: int,
    threshold: float,
    fallback_num_tokens: int,
    max_num_tokens: int | None = None,
    token_mask: torch.Tensor | None = None,
    density_noise: torch.Tensor | None = None,
    assign_masked_tokens: bool = False,
) -> DPCKNNClusters:
    """Density-peak clustering with k-NN density, as the original `cluster_dpc_knn`, for (views, patches, C).

    Runs in fp32 whatever the input dtype: scores are compared with an absolute threshold, so half precision
    would change the cluster count. Kept from the original on purpose: distances are scaled by sqrt(C), a point's
    delta falls back to the eccentricity (per-row maximum distance) of each non-denser point (its quirk Q1),
    strictly-denser comparison, fallback to the top `fallback_num_tokens` scores only when none passes.

    Args:
        max_num_tokens: keep at most this many centers per view (the highest scores); not in the original.
        token_mask: (views, patches), 0 for patches to ignore. They get density 0 and never become centers.
        density_noise: (views, patches) added to the density. The original adds `torch.rand * 1e-6` from the
            global RNG to break ties; `None` omits it so results do not depend on the RNG state.
        assign_masked_tokens: reproduce the original's bug of assigning every masked patch to cluster 0 (they
            then get pooled into token 0). By default they get label -1 and are pooled nowhere.
    """
    x = x.float()
    views, num_patches, channels = x.shape
    dist = torch.cdist(x, x) / math.sqrt(channels)
    valid = None
    if token_mask is not None:
        valid = token_mask.to(device=x.device) > 0
        far = dist.amax(dim=(1, 2), keepdim=True) + 1
        dist = torch.where(valid[:, None, :], dist, far)

    nearest = dist.topk(k, dim=-1, largest=False).values
    density = torch.exp(-(nearest**2).mean(dim=-1))
    if density_noise is not None:
        density = density + density_noise.to(density)
    if valid is not None:
        density = density * valid

    denser = density[:, None, :] > density[:, :, None]  # [v, i, j]: patch j is denser than patch i
    eccentricity = dist.amax(dim=-1)  # the original's per-row maximum (meant as the global one)
    delta = torch.where(denser, dist, eccentricity[:, None, :]).amin(dim=-1)
    scores = delta * density

    is_center = scores > threshold
    candidates = scores if valid is None or assign_masked_tokens else scores.masked_fill(~valid, -math.inf)
    fallback = torch.zeros_like(is_center).scatter_(1, candidates.topk(fallback_num_tokens, dim=-1).indices, True)
    is_center = torch.where(is_center.any(dim=-1, keepdim=True), is_center, fallback)
    if max_num_tokens is not None and max_num_tokens < num_patches:
        kept = candidates.masked_fill(~is_center, -math.inf).topk(max_num_tokens, dim=-1).indices
        is_center &= torch.zeros_like(is_center).scatter_(1, kept, True)

    num_tokens = is_center.sum(dim=-1)
    max_tokens = int(num_tokens.max())
    centers = torch.sort((~is_center).to(torch.uint8), dim=-1, stable=True).indices[:, :max_tokens]
    center_mask = torch.arange(max_tokens, device=x.device) < num_tokens[:, None]
    centers = centers.masked_fill(~center_mask, 0)

    center_dist = dist.gather(1, centers[:, :, None].expand(views, max_tokens, num_patches))
    labels = center_dist.masked_fill(~center_mask[:, :, None], math.inf).argmin(dim=1)
    labels = torch.where(is_center, is_center.cumsum(dim=-1) - 1, labels)
    if valid is not None and not assign_masked_tokens:
        labels = labels.masked_fill(~valid, -1)
    return DPCKNNClusters(labels, centers, center_mask, num_tokens, scores)
