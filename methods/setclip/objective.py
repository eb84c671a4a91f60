"""Set-CLIP (Gentle-CLIP, Song et al., arXiv 2406.05766): alignment from a few pairs plus unpaired images and texts.

A batch of B items holds some true pairs (`paired_mask`) and images and texts drawn independently of each other.
The loss adds to a supervised term on the pairs three terms that need no pairing: a symmetric KL between the kernel
densities of the two embedding sets (SDD), an MMD between them, and self-supervised NT-Xent on two views of each
image (SimCLR) and of each caption (SimCSE). Every form and constant follows the released code,
https://github.com/cauchy-max/Set-CLIP/blob/9d4e255/general_version_lanuage/end_to_end.py (lines 108-499), with its
per-item Python loops replaced by `torch.cdist`.

Every term is a standalone function of `(B, D)` embeddings, so it can regularise any CLIP fine-tune;
`SetCLIPLoss` combines them as a training-loss plug-in on top of plain CLIP or SmartCLIP's masked similarity.
"""

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from torch import nn
from transformers.models.clip.modeling_clip import CLIPAttention

from modeling_smartclip import SmartCLIPOutput, masked_similarity
from modeling_smartclip.configuration_smartclip import LAMBDA_SPARSITY
from modeling_smartclip.losses import sparsity_penalty

from smartclip_train.distributed import gather_features
from smartclip_train.objectives import TrainingLoss

# The released KDE multiplies by 3 ("to amplify") and divides by 16; both stay, see `kde_log_density`.
KDE_SCALE = 3 / 16
# The release's unused multi-kernel MMD,
# https://github.com/cauchy-max/Set-CLIP/blob/9d4e255/general_version_lanuage/mkmmd_loss.py, sums
# exp(-d^2 / (2 sigma)) over these sigmas; as our `bandwidths` (k = exp(-d^2 / bandwidth)) they are 2 * sigma.
RELEASED_MK_MMD_BANDWIDTHS = tuple(
    2 * sigma for sigma in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1, 5, 10, 15, 20, 25, 30, 35, 100, 1e3, 1e4, 1e5, 1e6)
)


def _check_sets(name: str, x: torch.Tensor, y: torch.Tensor, min_items: int = 1) -> None:
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(
            f"{name}: expected two (n, D) tensors with the same D, got {tuple(x.shape)} and {tuple(y.shape)}."
        )
    if len(x) < min_items or len(y) < min_items:
        raise ValueError(f"{name}: needs at least {min_items} items per set, got {len(x)} and {len(y)}.")


def _zero_with_graph(*tensors: torch.Tensor) -> torch.Tensor:
    """A zero that stays in the autograd graph, so `backward()` works when a term has nothing to compare."""
    return sum(t.sum() for t in tensors) * 0.0


# ----- supervised term on the pairs ----------------------------------------------------------------------------------


def paired_contrastive(logits_per_text: torch.Tensor, paired_mask: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy of a `(B, B)` caption-by-image logit matrix, queried by the paired items only.

    Rows of paired captions rank all B images and columns of paired images rank all B captions, so unpaired
    items act as extra negatives; item i's partner is item i. `paired_mask` is `(B,)` bool. With no pair in the
    batch the term is 0.
    """
    if logits_per_text.ndim != 2 or logits_per_text.shape[0] != logits_per_text.shape[1]:
        raise ValueError(f"paired_contrastive: logits must be square (B, B), got {tuple(logits_per_text.shape)}.")
    if paired_mask.shape != (len(logits_per_text),) or paired_mask.dtype != torch.bool:
        raise ValueError(
            f"paired_contrastive: paired_mask must be a bool tensor of shape ({len(logits_per_text)},), "
            f"got {paired_mask.dtype} {tuple(paired_mask.shape)}."
        )
    if not paired_mask.any():
        return _zero_with_graph(logits_per_text)
    targets = paired_mask.nonzero().squeeze(1)  # (s,)
    text_loss = F.cross_entropy(logits_per_text[paired_mask], targets)  # (s, B) paired captions vs all images
    image_loss = F.cross_entropy(logits_per_text.T[paired_mask], targets)  # (s, B) paired images vs all captions
    return (text_loss + image_loss) / 2


def supervised_contrastive(
    x: torch.Tensor, y: torch.Tensor, paired_mask: torch.Tensor, temperature: float = 0.05
) -> torch.Tensor:
    """Set-CLIP's CLIP term: `paired_contrastive` of `y @ x.T / temperature` (fixed temperature, no learnt scale).

    Args:
        x: `(B, D)` unit-norm image embeddings.
        y: `(B, D)` unit-norm text embeddings.
        paired_mask: `(B,)` bool, True where image i and caption i are a true pair.
    """
    _check_sets("supervised_contrastive", x, y)
    return paired_contrastive(y @ x.T / temperature, paired_mask)


# ----- semantic density distribution (SDD) ---------------------------------------------------------------------------


def kde_log_density(points: torch.Tensor, at: torch.Tensor, h: float = 0.5) -> torch.Tensor:
    """Log of the released kernel density of the set `points`, evaluated at each row of `at`.

    `p(z) = 3/16 * 1/(2 pi h^2) * sum_a exp(-||a - z||^2 / (4 h^2 sigma^2))`, with `sigma^2` the sum over dims of
    the unbiased per-dim variance of `points` (so the kernel width follows the set's spread). The density is not
    normalised: the 3/16 and 1/(2 pi h^2) factors cancel in SDD's log ratios but not in its `p log(p/q)` weights,
    so they are kept as released. Computed as a logsumexp, so a density far below float range keeps a finite log.

    Args:
        points: `(n, D)`, n >= 2.
        at: `(m, D)`.

    Returns:
        `(m,)` log densities.
    """
    _check_sets("kde_log_density", points, at)
    if len(points) < 2:
        raise ValueError(f"kde_log_density: the variance needs at least 2 points, got {len(points)}.")
    variance = points.var(dim=0).sum().clamp_min(torch.finfo(points.dtype).tiny)  # sigma^2, a scalar
    exponents = -torch.cdist(at, points).square() / (4 * h**2 * variance)  # (m, n)
    return math.log(KDE_SCALE / (2 * math.pi * h**2)) + exponents.logsumexp(dim=1)


def kde_density(points: torch.Tensor, at: torch.Tensor, h: float = 0.5) -> torch.Tensor:
    """`(m,)` released kernel density of `points` `(n, D)` at `at` `(m, D)`; see `kde_log_density`."""
    return kde_log_density(points, at, h).exp()


def symmetric_kl_density(a: torch.Tensor, b: torch.Tensor, h: float = 0.5) -> torch.Tensor:
    """`J(A, B) = sum_{a_i in A} [p_A log(p_A / p_B) + p_B log(p_B / p_A)](a_i)`, with the densities of
    `kde_density` evaluated at A's own points (the self-point included in p_A). Equal to
    `sum_i (p_A - p_B)(log p_A - log p_B)`, hence >= 0 and 0 when the two sets have the same density at A.

    Args:
        a: `(n, D)`, n >= 2.
        b: `(m, D)`, m >= 2.
    """
    log_p_a = kde_log_density(a, a, h)  # (n,)
    log_p_b = kde_log_density(b, a, h)  # (n,)
    return ((log_p_a.exp() - log_p_b.exp()) * (log_p_a - log_p_b)).sum()


def spread(a: torch.Tensor) -> torch.Tensor:
    """`R(A) = ||max_a a - min_a a||^2`, max and min per dimension of `a` `(n, D)`: the squared bounding-box
    diagonal. SDD divides by it, which rewards spread sets (the release's anti-collapse factor)."""
    return (a.amax(dim=0) - a.amin(dim=0)).square().sum()


def sdd_loss(x: torch.Tensor, y: torch.Tensor, h: float = 0.5) -> torch.Tensor:
    """Set-CLIP's semantic density distribution loss `(J(X, Y) + J(Y, X)) * (1/R(X) + 1/R(Y))`.

    Args:
        x: `(n, D)` image embeddings, n >= 2 (all items of the batch, paired or not).
        y: `(m, D)` text embeddings, m >= 2.
        h: the KDE bandwidth (0.5 as released, which makes the exponent `-||a - z||^2 / sigma^2`).
    """
    _check_sets("sdd_loss", x, y, min_items=2)
    divergence = symmetric_kl_density(x, y, h) + symmetric_kl_density(y, x, h)
    return divergence * (1 / spread(x) + 1 / spread(y))


# ----- coarse modality adaptation (MMD) ------------------------------------------------------------------------------


def mmd_loss(x: torch.Tensor, y: torch.Tensor, bandwidths: Sequence[float] = (1.0,)) -> torch.Tensor:
    """Biased MMD^2 `mean k(x_i, x_j) + mean k(y_i, y_j) - 2 mean k(x_i, y_j)`, diagonals included.

    The kernel is a bank `k(u, v) = sum_b exp(-||u - v||^2 / b)` over `bandwidths`. The default `(1.0,)` is the
    released scripts' single kernel; `RELEASED_MK_MMD_BANDWIDTHS` reproduces the release's unused multi-kernel
    `mmd_loss` (its `exp(-d^2 / (2 sigma))`, summed, not averaged, over 19 sigmas).

    Args:
        x: `(n, D)`.
        y: `(m, D)`.
    """
    _check_sets("mmd_loss", x, y)
    if not bandwidths or any(b <= 0 for b in bandwidths):
        raise ValueError(f"mmd_loss: bandwidths must be a non-empty list of positive numbers, got {bandwidths!r}.")
    inverse = 1 / torch.tensor(bandwidths, dtype=x.dtype, device=x.device)  # (K,)

    def kernel_mean(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        squared = torch.cdist(u, v).square()  # (n_u, n_v)
        return torch.exp(-squared[..., None] * inverse).sum(dim=-1).mean()

    return kernel_mean(x, x) + kernel_mean(y, y) - 2 * kernel_mean(x, y)


# ----- unimodal self-supervision -------------------------------------------------------------------------------------


def nt_xent(view_a: torch.Tensor, view_b: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """SimCLR's NT-Xent over the 2B rows of two views: each row's positive is the other view of its item, every
    other row (both views) is a negative, its own row is excluded. Cosine similarity, so any norm works.

    Args:
        view_a: `(B, D)` first views.
        view_b: `(B, D)` second views, row i the same item as `view_a`'s row i.

    Returns:
        the cross-entropy averaged over the 2B rows.
    """
    if view_a.shape != view_b.shape or view_a.ndim != 2 or len(view_a) < 1:
        raise ValueError(
            f"nt_xent: expected two (B, D) views of the same shape, got {tuple(view_a.shape)} and "
            f"{tuple(view_b.shape)}."
        )
    rows = F.normalize(torch.cat([view_a, view_b]), dim=-1)  # (2B, D)
    logits = rows @ rows.T / temperature  # (2B, 2B)
    logits = logits.masked_fill(torch.eye(len(rows), dtype=torch.bool, device=rows.device), float("-inf"))
    batch = len(view_a)
    targets = (torch.arange(2 * batch, device=rows.device) + batch) % (2 * batch)
    return F.cross_entropy(logits, targets)


# ----- the training-loss plug-in -------------------------------------------------------------------------------------


@contextlib.contextmanager
def attention_dropout(module: nn.Module, p: float | None) -> Iterator[None]:
    """Sets the attention dropout of every CLIP attention layer inside `module` to `p` for the block (`None`: keep
    the model's own). CLIP checkpoints ship with attention dropout 0, which would make SimCSE's second view a copy."""
    layers = [m for m in module.modules() if isinstance(m, CLIPAttention)]
    saved = [layer.dropout for layer in layers]
    try:
        if p is not None:
            for layer in layers:
                layer.dropout = p
        yield
    finally:
        for layer, value in zip(layers, saved):
            layer.dropout = value


class SetCLIPLoss(TrainingLoss):
    """Set-CLIP's total loss `w_clip L_sup + w_sdd L_SDD + w_mmd L_MMD + w_img L_img + w_txt L_txt`.

    Defaults are the released ResNet setting (1.0, 0.7, 0.2, 0.15, 0.15; temperatures 0.05, h = 0.5, MMD
    bandwidth 1.0). `base` picks the supervised term on the pairs: `"clip"` scores with the plain cosine,
    `"smartclip"` with `masked_similarity` (caption b's mask applied to every image), both divided by the fixed
    `temperature`; `"smartclip"` also adds `lambda_sparsity * sparsity_penalty(text_mask_probs)` as the modular
    loss does, and trains the mask head. SDD and MMD compare all B plain embeddings. The self-supervised terms run extra passes
    (a zero weight skips them): the image tower on `batch["pixel_values_aug"]` (SimCLR views built by the data
    step) and the text tower on the same captions with attention dropout `text_dropout` (SimCSE); the first view
    of each is the forward pass's own embedding. They run in training mode only: in eval mode dropout is off, so the
    text views would coincide, and held-out batches carry no second image view. Under several processes every term
    sees the gathered global batch.

    Called as `loss_fn(model, outputs, batch) -> (loss, logs)`: `outputs` is the model's `SmartCLIPOutput` for
    `batch`, `batch["paired_mask"]` is `(B,)` bool, `logs` holds each unweighted term as a float.
    """

    def __init__(
        self,
        base: str = "clip",
        clip_weight: float = 1.0,
        sdd_weight: float = 0.7,
        mmd_weight: float = 0.2,
        image_ssl_weight: float = 0.15,
        text_ssl_weight: float = 0.15,
        temperature: float = 0.05,
        ssl_temperature: float = 0.05,
        kde_bandwidth: float = 0.5,
        mmd_bandwidths: Sequence[float] = (1.0,),
        text_dropout: float | None = 0.1,
        lambda_sparsity: float = LAMBDA_SPARSITY,
    ):
        if base not in ("clip", "smartclip"):
            raise ValueError(f"SetCLIPLoss: base={base!r}; expected 'clip' or 'smartclip'.")
        weights = dict(
            clip=clip_weight, sdd=sdd_weight, mmd=mmd_weight, image_ssl=image_ssl_weight, text_ssl=text_ssl_weight
        )
        negative = {name: w for name, w in weights.items() if w < 0}
        if negative or not any(weights.values()):
            raise ValueError(f"SetCLIPLoss: weights must be >= 0 and not all 0, got {weights}.")
        if text_dropout is not None and not 0 <= text_dropout < 1:
            raise ValueError(f"SetCLIPLoss: text_dropout must be in [0, 1) or None, got {text_dropout}.")
        self.base = base
        self.weights = weights
        self.temperature = temperature
        self.ssl_temperature = ssl_temperature
        self.kde_bandwidth = kde_bandwidth
        self.mmd_bandwidths = tuple(mmd_bandwidths)
        self.text_dropout = text_dropout
        self.lambda_sparsity = lambda_sparsity
        # what the trainer reads to set the model up (see TrainingLoss)
        self.trains_mask_head = base == "smartclip"
        self.trains_logit_scale = False  # fixed temperatures
        self.scoring = "modular" if base == "smartclip" else "plain"
        self.config_loss_type = base

    def _check_batch(self, outputs: SmartCLIPOutput, batch: dict, training: bool) -> torch.Tensor:
        if "paired_mask" not in batch:
            raise ValueError(
                "SetCLIPLoss needs batch['paired_mask'] ((B,) bool, True for true pairs); build batches with "
                "smartclip_methods.setclip.pairing.PairedUnpairedDataset and SetCLIPCollator."
            )
        if self.weights["image_ssl"] > 0 and training and "pixel_values_aug" not in batch:
            raise ValueError(
                "SetCLIPLoss: image_ssl_weight > 0 needs batch['pixel_values_aug'] (a second, augmented view of each "
                "image); give PairedUnpairedDataset an `augment`, or set the weight to 0."
            )
        if self.base == "smartclip" and outputs.text_masks is None:
            raise ValueError("SetCLIPLoss(base='smartclip') needs outputs.text_masks from a SmartCLIPModel forward.")
        return batch["paired_mask"].to(device=outputs.text_embeds.device, dtype=torch.bool)

    def __call__(
        self, model: nn.Module, outputs: SmartCLIPOutput, batch: dict
    ) -> tuple[torch.Tensor, dict[str, float]]:
        model = extract_model_from_parallel(model)  # the extra tower passes call methods of the bare model
        paired_mask = self._check_batch(outputs, batch, model.training)
        x, y = outputs.image_embeds, outputs.text_embeds  # (B, D) each, unit norm
        # the collective carries floats; the global batch keeps every rank's rows in rank order
        x, y, paired_mask = gather_features(x, y, paired_mask.to(x.dtype))
        paired_mask = paired_mask.bool()
        w = self.weights
        terms: dict[str, tuple[float, torch.Tensor]] = {}

        if self.base == "smartclip":
            masks, probs = gather_features(outputs.text_masks, outputs.text_mask_probs)
            terms["sparsity"] = (self.lambda_sparsity, sparsity_penalty(probs))
        if w["clip"] > 0 and self.base == "clip":
            terms["clip"] = (w["clip"], supervised_contrastive(x, y, paired_mask, self.temperature))
        elif w["clip"] > 0:
            logits = masked_similarity(y, x, masks) / self.temperature  # (B, B): caption b's mask on every image
            terms["clip"] = (w["clip"], paired_contrastive(logits, paired_mask))
        if w["sdd"] > 0:
            terms["sdd"] = (w["sdd"], sdd_loss(x, y, self.kde_bandwidth))
        if w["mmd"] > 0:
            terms["mmd"] = (w["mmd"], mmd_loss(x, y, self.mmd_bandwidths))
        if w["image_ssl"] > 0 and model.training:
            augmented = model.get_image_features(batch["pixel_values_aug"].to(x.device, x.dtype)).pooler_output  # (B_local, D)
            terms["image_ssl"] = (w["image_ssl"], nt_xent(x, *gather_features(augmented), self.ssl_temperature))
        if w["text_ssl"] > 0 and model.training:
            with attention_dropout(model.text_model, self.text_dropout):
                second = model.get_text_features(batch["input_ids"], batch.get("attention_mask")).pooler_output  # (B_local, D)
            terms["text_ssl"] = (w["text_ssl"], nt_xent(y, *gather_features(second), self.ssl_temperature))

        # zero start: an evaluation with only self-supervised weights has no term
        loss = sum((weight * value for weight, value in terms.values()), x.new_zeros(()))
        logs = {name: value.item() for name, (_, value) in terms.items()}
        logs["paired_share"] = paired_mask.float().mean().item()
        return loss, logs


__all__ = [
    "RELEASED_MK_MMD_BANDWIDTHS",
    "SetCLIPLoss",
    "attention_dropout",
    "kde_density",
    "kde_log_density",
    "mmd_loss",
    "nt_xent",
    "paired_contrastive",
    "sdd_loss",
    "spread",
    "supervised_contrastive",
    "symmetric_kl_density",
]
