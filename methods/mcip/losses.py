"""MCIP's two ArcMargin losses on the joint image embedding.

`ArcMargin` is ArcFace (Deng et al., arXiv 1801.07698) against learned class proxies, through
pytorch-metric-learning's `ArcFaceLoss`:

    L = -log( e^{s cos(theta_y + m)} / (e^{s cos(theta_y + m)} + sum_{j != y} e^{s cos theta_j}) )

`multi_caption_arc_margin` is the same margin against proxies that are not learned: the frozen text embeddings of
each image's captions. The paper does not give its form (NOT FOUND in the reference notes); ours, in
docs/mcip.md: every image is a class whose proxies are its K captions; each (image, own caption) pair is one
ArcMargin term whose negatives are the other images' captions, and the loss is the mean over the terms. A caption
whose text is also one of the image's own (the scenes' sentences repeat across images) is neither a positive term
nor a negative of it.
"""

import math

import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import ArcFaceLoss
from pytorch_metric_learning.utils import common_functions as c_f

# The proxies start small: Adam moves every weight by about the learning rate per step whatever its size, and only
# their direction counts, so small proxies turn towards their class within the run's steps at the towers' learning
# rate (ArcFaceLoss's default, N(0, 1), hardly turns in a few hundred steps at 3e-4).
PROXY_INIT_STD = 0.01


def arc_margin_cosine(cosine: torch.Tensor, margin: float) -> torch.Tensor:
    """`cos(theta + m)` of target cosines (any shape), kept monotonic past `theta = pi - m` as
    pytorch-metric-learning 2.9.0's `ArcFaceLoss.modify_cosine_of_target_classes` keeps it (`margin` in radians)."""
    angles = torch.acos(torch.clamp(cosine, -1, 1))
    past = torch.cos(angles) - margin * math.sin(margin)
    return torch.where(angles <= math.pi - margin, torch.cos(angles + margin), past)


class ArcMargin(ArcFaceLoss):
    """Single-label ArcMargin: `ArcFaceLoss` with the margin in radians and its proxies `W` `(D, num_classes)`.

    Called as `loss(embeddings (N, D), labels (N,))`; the embeddings are scored in the proxies' dtype, because
    `ArcFaceLoss` casts its own `W` to the embeddings' dtype in place (a bf16 batch would make the trained proxies
    bf16 for good).
    """

    def __init__(self, num_classes: int, embedding_size: int, scale: float, margin: float,
                 init_std: float = PROXY_INIT_STD):
        init = c_f.TorchInitWrapper(torch.nn.init.normal_, std=init_std)
        super().__init__(num_classes, embedding_size, margin=math.degrees(margin), scale=scale, weight_init_func=init)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return super().forward(embeddings.to(self.W.dtype), labels)


def multi_caption_arc_margin(
    image_embeds: torch.Tensor,
    caption_embeds: torch.Tensor,
    caption_valid: torch.Tensor,
    caption_keys: torch.Tensor,
    scale: float,
    margin: float,
) -> torch.Tensor:
    """ArcMargin of each image against the frozen embeddings of every image's captions as class proxies.

    For image i and each of its captions p, `-log(e^{s cos(theta_ip + m)} / (e^{s cos(theta_ip + m)} +
    sum_{q in N_i} e^{s cos theta_iq}))`, where `N_i` are the batch's captions whose text is none of image i's; the
    mean over all (i, p). With one caption per image and distinct captions this is `ArcMargin` whose proxies are
    the captions' embeddings and whose labels are the image indices.

    Args:
        image_embeds: `(N, D)` image embeddings (normalised here).
        caption_embeds: `(N, K, D)` unit caption embeddings (frozen: no gradient is needed through them).
        caption_valid: `(N, K)` bool, False for padding (an image with fewer than K captions).
        caption_keys: `(N, K)` int64, equal for captions of equal text.
        scale, margin: ArcMargin's s and m (radians).
    """
    n, k, dim = caption_embeds.shape
    if image_embeds.shape != (n, dim) or caption_valid.shape != (n, k) or caption_keys.shape != (n, k):
        raise ValueError(
            f"multi_caption_arc_margin: image_embeds {tuple(image_embeds.shape)}, caption_embeds "
            f"{tuple(caption_embeds.shape)}, caption_valid {tuple(caption_valid.shape)}, caption_keys "
            f"{tuple(caption_keys.shape)}; expected (N, D), (N, K, D), (N, K), (N, K)."
        )
    if not caption_valid.any():
        raise ValueError("multi_caption_arc_margin: no image in the batch has a caption.")
    dtype = torch.promote_types(image_embeds.dtype, torch.float32)  # bf16 cosines are too coarse for the margin
    # Normalised here as `ArcFaceLoss` normalises (the gradient is then the same on any input).
    cosine = F.normalize(image_embeds.to(dtype), dim=-1) @ caption_embeds.reshape(n * k, dim).to(dtype).T  # (N, N*K)
    keys, valid = caption_keys.reshape(n * k), caption_valid.reshape(n * k)
    # own[i, q]: caption q has the text of one of image i's own captions.
    own = ((caption_keys[:, :, None] == keys) & caption_valid[:, :, None]).any(dim=1)  # (N, N*K)
    negatives = (scale * cosine).masked_fill(own | ~valid, float("-inf"))  # (N, N*K)
    positive_cosine = cosine.reshape(n, n, k)[torch.arange(n), torch.arange(n)]  # (N, K): image i, its captions
    positives = scale * arc_margin_cosine(positive_cosine, margin)  # (N, K)
    log_denominator = torch.logaddexp(positives, torch.logsumexp(negatives, dim=1, keepdim=True))  # (N, K)
    return (log_denominator - positives)[caption_valid].mean()


__all__ = ["PROXY_INIT_STD", "ArcMargin", "arc_margin_cosine", "multi_caption_arc_margin"]
