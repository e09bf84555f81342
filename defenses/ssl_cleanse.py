"""SSL-Cleanse (Zheng et al., ECCV 2024): invert a trigger for every cluster of an encoder's features, flag the outlier, unlearn it.

Detection. A backdoored encoder maps triggered images onto the features of its
target, and the target is among the defender's clean images: some cluster of
their features. Reaching that cluster from every other one takes a much smaller
trigger than reaching any other cluster does. SSL-Cleanse clusters the clean
images' features (k-means, K clusters) and, for every cluster t, inverts the
smallest trigger that moves images of the other clusters onto t's features:

    min_{m, p}  mean(2 - 2 cos(f(x'_i), z_i)) + lambda * ||m||_1 / (H W),
    x' = (1 - m) * x + m * p,   m = tanh(a) / 2 + 1/2 in [0, 1]^(H x W),  p = tanh(b) / 2 + 1/2,

x_i an image of another cluster and z_i the feature of an image of t, paired once
at random. An epoch succeeds when at least `success_rate` of the stamped clean
images have their nearest clean feature (1-NN, Euclidean) in cluster t; lambda
adapts as in Neural Cleanse: 0 until `patience` successful epochs in a row, then
`init_lambda`, multiplied by `lambda_factor` after `patience` successful epochs in
a row and divided by it after as many failed ones. Each cluster's evidence is the
L1 share ||m||_1 / (H W) of its smallest successful mask (1.0 when none
succeeded). The anomaly index of the smallest share l_min among the K shares is

    |l_min - median(l)| / (1.4826 * median(|l - median(l)|) / 0.6745),

and the encoder is flagged when it exceeds `flag_above`.

Mitigation: fine-tune the suspect so that clean images stamped with an inverted
trigger keep the clean features of the frozen suspect, and clean images keep theirs,

    min_f'  mean(1 - cos(f'(x'), f(x))) + mean(1 - cos(f'(x), f(x))),

each image stamped with one trigger drawn at random from the unlearned clusters':
every cluster whose own anomaly index exceeds `flag_above`, or the smallest
mask's cluster when none does. As DECREE's here, the mitigation runs on every
suspect, flagged or not, and the verdict is reported beside it.

Facts from the reference code (UCF-ML-Research/SSL-Cleanse: detector/core/
detector.py, cfg.py, test.py; mitigator/core/train.py, methods/byol.py; the
README's commands): scikit-learn k-means (30 restarts) on the raw features, K from
the paper's Sliding Window Kneedle (12 in the README's runs); N - (largest cluster)
source images of the other clusters per target; the norm-MSE loss 2 - 2 cos
against a random feature of the target cluster (not its centroid); mask and
pattern drawn uniformly at random; Adam 0.1 (betas 0.5, 0.9), batch 32, 1000
epochs a cluster, lambda 0.1 by a factor of 1.5 with patience 5, success at a
1-NN rate of 0.99 over 1000 stamped images; the anomaly index above, with its
division by 0.6745 on top of Neural Cleanse's 1.4826. The mitigator fine-tunes for
500 epochs.

Adaptations, stated:
- K is `clusters` (the README's 12, at most one per image), not chosen by the
  Sliding Window Kneedle;
- the flag threshold: the reference code logs the anomaly index without deciding;
  `flag_above` = 2 is Neural Cleanse's (bolunwang/backdoor, mad_outlier_detection.py);
- the 1-NN rate is read on min(`knn_samples`, N) distinct images (the reference
  draws 1000 with replacement), and a cluster's share is that of the mask the rate
  was read on (the reference records the epoch's mean over its batches);
- the mitigation: the reference fine-tunes with a BYOL loss between augmented
  clean views against a frozen copy plus a term pulling a view stamped with the
  reversed trigger onto the frozen features; here DECREE's unlearning (harness/unlearning.py) with
  the profile's Adam learning rate, BatchNorm frozen (eval mode) as in BadEncoder.

Budget (the rule of harness/profiles.py): each cluster's inversion epochs (1000)
and the unlearning epochs (500), scaled by the budget's fraction; the K clusters
are not scaled, since the outlier rule needs its population.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from harness.contract import MIN_EPOCHS, MIN_STEPS, Budget, CleanSubset, DefenseResult, Steps
from harness.losses import cosine_distance
from harness.models import Encoder
from harness.registry import DEFENSES
from harness.training import Progress, batched_features, descend, freeze, seed_everything, shuffled_batches, to_float
from harness.unlearning import unlearn

CONSISTENCY = 1.4826  # MAD of a normal distribution -> its standard deviation (Neural Cleanse)
REFERENCE_MAD_DIVISOR = 0.6745  # the reference code divides the MAD by this as well


@dataclass(frozen=True)
class SSLCleanseConfig:
    clusters: int = 12  # K: the README's runs (the paper picks it with its Sliding Window Kneedle)
    kmeans_restarts: int = 30  # k-means initialisations, the best kept
    inversion_epochs: int = 1000  # reference epochs of each cluster's inversion (scaled by the budget)
    unlearning_epochs: int = 500  # reference mitigator epochs (scaled by the budget)
    batch_size: int = 32
    lr: float = 0.1  # Adam (betas 0.5, 0.9) on the mask and pattern parameters
    init_lambda: float = 0.1  # the cost on the mask's L1 share once the inversion first succeeds
    lambda_factor: float = 1.5
    patience: int = 5  # epochs in a row before lambda is set, raised or lowered
    success_rate: float = 0.99  # share of stamped images whose nearest clean feature is in the target cluster
    knn_samples: int = 1000  # stamped images the success rate is read on
    flag_above: float = 2.0  # flag when the smallest mask's anomaly index exceeds this

    def steps(self, budget: Budget) -> "SSLCleanseSteps":
        return SSLCleanseSteps(inversion_epochs=budget.steps(self.inversion_epochs, MIN_STEPS),
                               unlearning_epochs=budget.steps(self.unlearning_epochs, MIN_EPOCHS))

    def __post_init__(self) -> None:
        if self.clusters < 3:
            raise ValueError(f"SSL-Cleanse's outlier rule needs at least 3 clusters, got {self.clusters}")
        if min(self.kmeans_restarts, self.inversion_epochs, self.unlearning_epochs, self.batch_size, self.patience,
               self.knn_samples) < 1:
            raise ValueError("kmeans_restarts, inversion_epochs, unlearning_epochs, batch_size, patience and knn_samples "
                             "must be at least 1")
        if not 0 < self.success_rate <= 1 or self.lambda_factor <= 1 or self.lr <= 0 or self.init_lambda <= 0 or self.flag_above <= 0:
            raise ValueError("need success_rate in (0, 1], lambda_factor > 1 and lr, init_lambda, flag_above > 0")


@dataclass(frozen=True)
class SSLCleanseSteps(Steps):
    inversion_epochs: int  # of each cluster
    unlearning_epochs: int


@dataclass(frozen=True, eq=False)
class ClusterTrigger:
    mask: Tensor  # (1, H, W) in [0, 1]
    pattern: Tensor  # (3, H, W) in [0, 1]
    l1_share: float  # ||mask||_1 / (H W) of the smallest successful mask; 1.0 when no epoch succeeded
    hit_rate: float  # its 1-NN rate into the cluster (the last epoch's when none succeeded)


@dataclass(frozen=True, eq=False)
class Detection:
    labels: Tensor  # (N,) cluster of each clean image
    triggers: list[ClusterTrigger]  # one per cluster
    anomaly_indices: Tensor  # (K,) each cluster's; 0 for shares at or above the median
    flag_above: float

    @property
    def shares(self) -> list[float]:
        return [t.l1_share for t in self.triggers]

    @property
    def chosen(self) -> int:
        """The cluster of the smallest mask: the suspected target."""
        return int(np.argmin(self.shares))

    @property
    def anomaly_index(self) -> float:
        return float(self.anomaly_indices[self.chosen])

    @property
    def flagged(self) -> bool:
        return self.anomaly_index > self.flag_above

    @property
    def unlearned(self) -> list[int]:
        """The clusters whose triggers the mitigation unlearns: the outliers, or the smallest mask's when there is none."""
        return (self.anomaly_indices > self.flag_above).nonzero().flatten().tolist() or [self.chosen]


def stamp(x: Tensor, mask: Tensor, pattern: Tensor) -> Tensor:
    return (1 - mask) * x + mask * pattern


def inversion_objective(features: Tensor, targets: Tensor, mask: Tensor, lam: float) -> Tensor:
    """The reference's norm-MSE 2 - 2 cos between stamped features and their target features, plus lambda * L1 share."""
    return 2 * cosine_distance(features, targets) + lam * mask.mean()


def anomaly_indices(shares: Tensor) -> Tensor:
    """Each share's distance below the median in the reference's MAD units; 0 at or above the median.

    The median is torch's (the lower middle value), as the reference's. When the MAD is 0, a share below the
    median is infinitely anomalous.
    """
    median = shares.median()
    mad = CONSISTENCY * (shares - median).abs().median() / REFERENCE_MAD_DIVISOR
    below = shares < median
    if mad == 0:
        return torch.where(below, torch.inf, 0.0)
    return torch.where(below, (median - shares) / mad, 0.0)


def cluster(features: Tensor, k: int, restarts: int, seed: int) -> Tensor:
    """k-means clusters of the feature rows (scikit-learn's, as the reference's), numbered 0.. in order of first use."""
    from sklearn.cluster import KMeans

    found = KMeans(n_clusters=min(k, len(features)), n_init=restarts, random_state=seed).fit_predict(
        features.cpu().numpy().astype(np.float64))
    return torch.unique(torch.as_tensor(found, dtype=torch.long), return_inverse=True)[1]


def _uniform_parameter(shape: tuple[int, ...], gen: torch.Generator, device: torch.device) -> Tensor:
    """atanh of a uniform draw in (-1, 1): the mask or pattern tanh(a) / 2 + 1/2 starts uniform in (0, 1)."""
    u = (2 * torch.rand(shape, generator=gen) - 1).clamp(-1 + 1e-6, 1 - 1e-6)
    return torch.atanh(u).to(device).requires_grad_()


def _squash(a: Tensor) -> Tensor:
    return torch.tanh(a) / 2 + 0.5


@torch.no_grad()
def hit_rate(encoder: Encoder, x: Tensor, bank: Tensor, labels: Tensor, target: int) -> float:
    """Share of the images x whose nearest feature in `bank` (1-NN, Euclidean) belongs to cluster `target`."""
    nearest = torch.cdist(encoder(x), bank).argmin(dim=1)
    return (labels[nearest] == target).float().mean().item()


def invert_cluster(encoder: Encoder, images: Tensor, bank: Tensor, labels: Tensor, target: int, sources: int, epochs: int,
                   config: SSLCleanseConfig, gen: torch.Generator) -> ClusterTrigger:
    """The smallest mask and pattern that move `sources` images of the other clusters onto cluster `target`'s features.

    `images` (N, 3, H, W) float in [0, 1] and `bank` (N, D) their features under the frozen `encoder`, `labels` (N,) their
    clusters, all on one device.
    """
    device = images.device
    members = (labels == target).nonzero().flatten()
    others = (labels != target).nonzero().flatten()
    source = others[torch.randperm(len(others), generator=gen)[:sources].to(device)]
    paired = bank[members[torch.randint(len(members), (len(source),), generator=gen).to(device)]]
    mask_a = _uniform_parameter((1, *images.shape[2:]), gen, device)
    pattern_a = _uniform_parameter(tuple(images.shape[1:]), gen, device)
    optimizer = torch.optim.Adam([mask_a, pattern_a], lr=config.lr, betas=(0.5, 0.9))
    lam, up, down = 0.0, 0, 0
    best: ClusterTrigger | None = None
    for _ in range(epochs):
        for idx in shuffled_batches(len(source), config.batch_size, gen, device=device):
            mask = _squash(mask_a)
            loss = inversion_objective(encoder(stamp(images[source[idx]], mask, _squash(pattern_a))), paired[idx], mask, lam)
            descend(optimizer, loss)
        mask, pattern = _squash(mask_a).detach(), _squash(pattern_a).detach()
        probe = torch.randperm(len(images), generator=gen)[: config.knn_samples].to(device)
        rate = hit_rate(encoder, stamp(images[probe], mask, pattern), bank, labels, target)
        share = mask.mean().item()
        if rate >= config.success_rate and (best is None or share < best.l1_share):
            best = ClusterTrigger(mask.clone(), pattern.clone(), share, rate)
        up, down = (up + 1, 0) if rate >= config.success_rate else (0, down + 1)
        if lam == 0:
            if up >= config.patience:
                lam, up = config.init_lambda, 0
        elif up >= config.patience:
            lam, up = lam * config.lambda_factor, 0
        elif down >= config.patience:
            lam, down = lam / config.lambda_factor, 0
    return best if best is not None else ClusterTrigger(mask, pattern, 1.0, rate)


def detect(encoder: Encoder, clean: CleanSubset, config: SSLCleanseConfig, gen: torch.Generator, device: torch.device,
           epochs: int | None = None) -> Detection:
    """Cluster the clean images by the frozen `encoder`'s features, invert a trigger into every cluster, find the outlier.

    `epochs` of each cluster's inversion (default: the config's reference count).
    """
    epochs = config.inversion_epochs if epochs is None else epochs
    images = to_float(clean.images, device)
    bank = batched_features(encoder, clean.images, device)
    labels = cluster(bank, config.clusters, config.kmeans_restarts, int(torch.randint(2**31 - 1, (1,), generator=gen))).to(device)
    sizes = torch.bincount(labels)
    sources = len(images) - int(sizes.max())  # as many source images for every cluster
    progress = Progress("ssl-cleanse inversion", len(sizes))
    triggers = []
    for target in range(len(sizes)):
        found = invert_cluster(encoder, images, bank, labels, target, sources, epochs, config, gen)
        progress.epoch(target, epochs * sources, l1_share=found.l1_share, hit_rate=found.hit_rate)
        triggers.append(found)
    shares = torch.tensor([t.l1_share for t in triggers], dtype=torch.float64)
    return Detection(labels, triggers, anomaly_indices(shares), config.flag_above)


def unlearning_stamp(triggers: list[ClusterTrigger], gen: torch.Generator, device: torch.device) -> Callable[[Tensor], Tensor]:
    """Stamps each image of a batch with one of `triggers`, drawn at random."""
    masks = torch.stack([t.mask for t in triggers]).to(device)
    patterns = torch.stack([t.pattern for t in triggers]).to(device)

    def stamp_batch(x: Tensor) -> Tensor:
        pick = torch.randint(len(triggers), (len(x),), generator=gen).to(device)
        return stamp(x, masks[pick], patterns[pick])

    return stamp_batch


@DEFENSES.register("ssl_cleanse", config=SSLCleanseConfig)
def ssl_cleanse(suspect: Encoder, clean: CleanSubset, budget: Budget, seed: int, config: SSLCleanseConfig) -> DefenseResult:
    gen = seed_everything(seed, "ssl_cleanse")
    device = budget.device
    encoder = freeze(suspect.to(device))
    steps = config.steps(budget)
    start = time.perf_counter()
    found = detect(encoder, clean, config, gen, device, steps.inversion_epochs)
    meta = {
        "flagged": found.flagged,
        "anomaly_index": found.anomaly_index,
        "l1_share": found.shares[found.chosen],
        "chosen_cluster": found.chosen,
        "mask_l1_shares": found.shares,
        "hit_rates": [t.hit_rate for t in found.triggers],
        "cluster_sizes": torch.bincount(found.labels).tolist(),
        "unlearned_clusters": found.unlearned,
        "inversion_seconds": time.perf_counter() - start,
        "steps": steps.as_dict(),
    }
    triggers = [found.triggers[c] for c in found.unlearned]
    encoder, meta["unlearning_seconds"] = unlearn(encoder, unlearning_stamp(triggers, gen, device), clean, budget,
                                                  steps.unlearning_epochs, gen, "ssl-cleanse unlearning")
    return DefenseResult(encoder.cpu(), meta)
