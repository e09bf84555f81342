"""SSL-Cleanse: its outlier rule's known answers, its clusters, and its trigger inversion on a small backdoored encoder."""

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from defenses.ssl_cleanse import (ClusterTrigger, Detection, SSLCleanseConfig, anomaly_indices, cluster, hit_rate,
                                  inversion_objective, invert_cluster, ssl_cleanse, stamp)
from harness.contract import Budget
from harness.losses import mean_pairwise_cosine
from harness.rows import Row, RowSettings
from harness.tables import render, verdict_table
from harness.training import batched_features, to_float
from tests.conftest import TRIGGER

CPU = torch.device("cpu")
MAD_UNIT = 1.4826 / 0.6745  # the reference's MAD is median |l - median| times this


@pytest.mark.parametrize("bad", [{"clusters": 2}, {"kmeans_restarts": 0}, {"inversion_epochs": 0}, {"unlearning_epochs": 0},
                                 {"batch_size": 0}, {"patience": 0}, {"knn_samples": 0}, {"success_rate": 0.0},
                                 {"success_rate": 1.5}, {"lambda_factor": 1.0}, {"lr": 0.0}, {"init_lambda": 0.0},
                                 {"flag_above": 0.0}])
def test_config_refuses_what_the_method_cannot_run(bad):
    with pytest.raises(ValueError):
        SSLCleanseConfig(**bad)


def test_steps_follow_the_budget_rule():
    steps = SSLCleanseConfig().steps(Budget(fraction=0.075, batch_size=100, lr=1e-3, device=CPU))
    assert steps.as_dict() == {"inversion_epochs": 75, "unlearning_epochs": 38}
    floor = SSLCleanseConfig().steps(Budget(fraction=0.001, batch_size=100, lr=1e-3, device=CPU))
    assert floor.as_dict() == {"inversion_epochs": 10, "unlearning_epochs": 5}


def test_anomaly_index_known_answers():
    # median (torch's lower middle) 0.5; |l - median| = 0.4, 0.1, 0, 0, 0.1 -> MAD 0.1 * MAD_UNIT
    got = anomaly_indices(torch.tensor([0.1, 0.4, 0.5, 0.5, 0.6], dtype=torch.float64))
    assert got.tolist() == pytest.approx([0.4 / (0.1 * MAD_UNIT), 0.1 / (0.1 * MAD_UNIT), 0.0, 0.0, 0.0])
    # lower middle of an even count: median 0.4, |l - median| = 0.3, 0, 0.1, 0.2 -> 0.1
    assert anomaly_indices(torch.tensor([0.1, 0.4, 0.5, 0.6])).tolist() == pytest.approx([0.3 / (0.1 * MAD_UNIT), 0, 0, 0])
    # MAD 0: a share below the median is infinitely anomalous, equal shares are not anomalous at all
    assert anomaly_indices(torch.tensor([0.1, 1.0, 1.0, 1.0])).tolist() == [float("inf"), 0.0, 0.0, 0.0]
    assert anomaly_indices(torch.tensor([1.0, 1.0, 1.0])).tolist() == [0.0, 0.0, 0.0]


def _detection(shares: list[float]) -> Detection:
    triggers = [ClusterTrigger(torch.full((1, 2, 2), s), torch.zeros(3, 2, 2), s, 1.0) for s in shares]
    return Detection(torch.arange(len(shares)), triggers, anomaly_indices(torch.tensor(shares, dtype=torch.float64)), 2.0)


def test_verdict_chosen_cluster_and_unlearned_triggers():
    outlier = _detection([0.5, 0.45, 0.02, 0.55, 0.5, 0.6])  # 0.02 sits (0.5 - 0.02) / (0.05 * MAD_UNIT) = 4.4 MADs below
    assert outlier.chosen == 2 and outlier.flagged and outlier.anomaly_index == pytest.approx(0.48 / (0.05 * MAD_UNIT))
    assert outlier.unlearned == [2]
    spread = _detection([0.2, 0.3, 0.4, 0.5, 0.6])
    assert spread.chosen == 0 and not spread.flagged
    assert spread.unlearned == [0]  # no outlier: the smallest mask's trigger is unlearnt all the same
    two = _detection([0.01, 0.02, 0.5, 0.5, 0.5, 0.52, 0.48])
    assert two.flagged and two.unlearned == [0, 1]


def test_inversion_objective_is_the_reference_norm_mse_plus_the_mask_cost():
    g = torch.Generator().manual_seed(0)
    features, mask = torch.randn(6, 8, generator=g), torch.rand(1, 4, 4, generator=g)
    assert inversion_objective(3 * features, features, mask, 0.5).item() == pytest.approx(0.5 * mask.mean().item(), abs=1e-6)
    opposite = inversion_objective(-features, features, mask, 0.0).item()
    assert opposite == pytest.approx(4.0)  # 2 - 2 cos, cos = -1
    expected = (2 - 2 * F.cosine_similarity(features, features.roll(1, 0))).mean() + 0.1 * mask.mean()
    assert inversion_objective(features, features.roll(1, 0), mask, 0.1).item() == pytest.approx(expected.item())


def test_clusters_come_from_features_alone_and_are_numbered_densely():
    g = torch.Generator().manual_seed(0)
    truth = torch.arange(4).repeat_interleave(10)
    features = (torch.eye(4) * 5)[truth] + 0.1 * torch.randn(40, 4, generator=g)
    labels = cluster(features, 4, restarts=3, seed=0)
    assert all(len(set(labels[truth == c].tolist())) == 1 for c in range(4)) and sorted(set(labels.tolist())) == [0, 1, 2, 3]
    assert torch.equal(labels, cluster(features, 4, restarts=3, seed=0))
    assert sorted(set(cluster(features[:3], 12, restarts=3, seed=0).tolist())) == [0, 1, 2]  # never more clusters than images


def test_the_target_clusters_trigger_is_small_and_collapses_features_onto_it(encoders):
    """On the backdoored encoder, the cluster the planted trigger leads to is reached with a far smaller mask than another."""
    _, backdoored, subset = encoders
    images, bank = to_float(subset.images, CPU), batched_features(backdoored, subset.images, CPU)
    labels = cluster(bank, 12, restarts=30, seed=0)
    with torch.no_grad():
        planted = torch.cdist(backdoored(to_float(TRIGGER.stamp(subset.images), CPU)), bank).argmin(1)
    target = int(labels[planted].mode().values)  # where the planted trigger sends most images
    other = next(c for c in range(int(labels.max()) + 1) if c != target)
    sources, config = len(images) - int(torch.bincount(labels).max()), SSLCleanseConfig()
    found = invert_cluster(backdoored, images, bank, labels, target, sources, 75, config, torch.Generator().manual_seed(0))
    control = invert_cluster(backdoored, images, bank, labels, other, sources, 75, config, torch.Generator().manual_seed(0))
    centroid = bank[labels == target].mean(0, keepdim=True)
    with torch.no_grad():
        before = F.cosine_similarity(backdoored(images), centroid).mean().item()
        after = F.cosine_similarity(backdoored(stamp(images, found.mask, found.pattern)), centroid).mean().item()
    print(f"SSL-Cleanse L1 share: target cluster {found.l1_share:.3f}, cluster {other} {control.l1_share:.3f}; "
          f"cosine to the target centroid {before:.3f} -> {after:.3f}")
    assert found.l1_share < 0.5 * control.l1_share
    assert hit_rate(backdoored, stamp(images, found.mask, found.pattern), bank, labels, target) >= config.success_rate
    assert after > before + 0.1


def test_mitigation_runs_whatever_the_verdict_and_lowers_the_collapse(encoders):
    _, backdoored, subset = encoders
    budget = Budget(fraction=0.001, batch_size=50, lr=1e-4, device=CPU)  # the floors: 10 inversion epochs, 5 unlearning epochs
    config = dataclasses.replace(SSLCleanseConfig(), clusters=3)  # few clusters: this checks the plumbing, not the verdict
    fixed = ssl_cleanse(copy.deepcopy(backdoored), subset, budget, seed=0, config=config)
    meta = fixed.meta
    assert meta["steps"] == {"inversion_epochs": 10, "unlearning_epochs": 5} and "unlearning_seconds" in meta
    assert len(meta["mask_l1_shares"]) == len(meta["cluster_sizes"]) == len(meta["hit_rates"]) == 3
    assert sum(meta["cluster_sizes"]) == len(subset) and meta["l1_share"] == min(meta["mask_l1_shares"])
    assert meta["chosen_cluster"] in meta["unlearned_clusters"] and isinstance(meta["flagged"], bool)
    x = TRIGGER.stamp(subset.images[:64]).float() / 255
    with torch.no_grad():
        assert mean_pairwise_cosine(fixed.encoder(x)) < mean_pairwise_cosine(backdoored(x))


def test_the_verdict_table_shows_ssl_cleanses_evidence_beside_decrees():
    def judged(defense: str, meta: dict) -> Row:
        return Row(suite="effectiveness", profile="tiny", attack="badencoder", defense=defense, pretrain="fmnist", downstream="fmnist",
                   seed=0, acc=80.0, asr_all=5.0, asr_nontarget=5.0, n_test=10, n_nontarget=9, seconds={"attack": 1.0},
                   settings=RowSettings(defense_meta=meta))

    rows = [judged("decree", {"flagged": False, "l1_share": 0.07, "stamped_cosine": 0.99}),
            judged("ssl_cleanse", {"flagged": True, "l1_share": 0.03, "anomaly_index": 3.25, "mask_l1_shares": [0.03, 0.4, 0.5]})]
    table = verdict_table(rows).set_index("defense")
    assert table.loc["ssl_cleanse", ["verdict", "l1_share", "anomaly_index", "stamped_cosine"]].tolist() == ["flagged", "0.0300", "3.2500", ""]
    assert table.loc["decree", ["verdict", "anomaly_index"]].tolist() == ["not flagged", ""]
    assert "nan" not in render(verdict_table(rows), "markdown")
