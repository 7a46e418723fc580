"""Connecting to Ray: loopback addresses stay on loopback (no Ray started)."""

from __future__ import annotations

import pytest
from ray._private import services

from raycls.cluster.runtime import _loopback_kept


@pytest.mark.parametrize("address", ["127.0.0.1:6379", "localhost:6379"])
def test_a_loopback_address_is_not_rewritten_to_the_network_address(address):
    with _loopback_kept(address):
        resolved = services.canonicalize_bootstrap_address(address)
    assert resolved.rpartition(":")[0] == "127.0.0.1"


def test_other_addresses_are_left_to_ray():
    before = services.canonicalize_bootstrap_address("10.1.2.3:6379")
    with _loopback_kept("10.1.2.3:6379"):
        assert services.canonicalize_bootstrap_address("10.1.2.3:6379") == before == "10.1.2.3:6379"
    with _loopback_kept("ray://127.0.0.1:10001"):  # Ray Client: Ray's own handling
        pass
