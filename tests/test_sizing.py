"""Actor pool sizing from the cluster's resources (no Ray)."""

from __future__ import annotations

import pytest

from raycls.bulk.sizing import PoolSize, StageNeeds, plan_pools
from raycls.config import ClassifyConfig, load_config


def test_cpu_classifier_fills_every_cpu_and_autoscales():
    (pool,) = plan_pools([StageNeeds(None, 1.0, 0.0)], cpus=2.0, gpus=0.0)
    assert pool == PoolSize(min_size=1, initial_size=2, max_size=None)
    assert pool.strategy_kwargs() == {"min_size": 1, "initial_size": 2}
    (pool,) = plan_pools([StageNeeds(None, 2.0, 0.0)], cpus=1000.0, gpus=0.0)
    assert pool.initial_size == 500


def test_pinned_pool_keeps_its_size_and_its_cpus_count_first():
    caption, classify = plan_pools(
        [StageNeeds(3, 1.0, 0.0), StageNeeds(None, 1.0, 0.0)], cpus=8.0, gpus=0.0
    )
    assert caption.pinned and caption.strategy_kwargs() == {"size": 3}
    assert classify.initial_size == 5  # the 5 CPUs the pinned captioner left


def test_gpu_classifier_takes_the_gpus_and_leaves_cpus_for_decoding():
    (pool,) = plan_pools([StageNeeds(None, 1.0, 1.0)], cpus=16.0, gpus=4.0)
    assert pool.initial_size == 4
    (pool,) = plan_pools([StageNeeds(None, 1.0, 0.25)], cpus=4.0, gpus=1.0)
    assert pool.initial_size == 3  # four would fit the GPU but leave no CPU to decode
    (pool,) = plan_pools([StageNeeds(None, 1.0, 1.0)], cpus=8.0, gpus=0.0)
    assert pool.initial_size == 1  # waits for a GPU node to join


def test_gpu_captioner_and_classifier_split_the_gpus():
    caption, classify = plan_pools(
        [StageNeeds(None, 1.0, 1.0), StageNeeds(None, 1.0, 1.0)], cpus=64.0, gpus=8.0
    )
    assert (caption.initial_size, classify.initial_size) == (6, 2)


def test_cpu_pools_share_what_is_left():
    caption, classify = plan_pools(
        [StageNeeds(None, 1.0, 0.0), StageNeeds(None, 1.0, 0.0)], cpus=16.0, gpus=0.0
    )
    assert (caption.initial_size, classify.initial_size) == (12, 4)
    # After a GPU captioner, read/decode tasks keep half of the CPUs left.
    _, classify = plan_pools(
        [StageNeeds(None, 1.0, 1.0), StageNeeds(None, 1.0, 0.0)], cpus=9.0, gpus=1.0
    )
    assert classify.initial_size == 4


def test_a_tiny_cluster_still_gets_one_actor_per_pool():
    pools = plan_pools([StageNeeds(None, 2.0, 0.0), StageNeeds(None, 4.0, 0.0)], 1.0, 0.0)
    assert [p.initial_size for p in pools] == [1, 1]


def test_actor_counts_default_to_automatic_and_reject_zero():
    assert ClassifyConfig().classify_actors is None
    config = load_config(None, ["classify.classify_actors=3", "classify.caption_actors=null"])
    assert (config.classify.classify_actors, config.classify.caption_actors) == (3, None)
    with pytest.raises(ValueError, match="classify_actors=0 must be >= 1"):
        ClassifyConfig(classify_actors=0)
