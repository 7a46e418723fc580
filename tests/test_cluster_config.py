"""cluster.yaml passes Ray's own cluster-config validation; the KubeRay example parses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster_config() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_matches_ray_schema(cluster_config):
    import jsonschema
    import ray.autoscaler

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    jsonschema.validate(cluster_config, json.loads(schema_path.read_text()))


def test_cluster_yaml_passes_ray_validation(cluster_config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(cluster_config)
    validate_config(prepared)
    assert prepared["head_node_type"] == "head"
    assert prepared["available_node_types"]["gpu_worker"]["node_config"]["InstanceType"]


def test_cluster_yaml_keeps_the_dashboard_on_loopback_with_token_auth(cluster_config):
    head_start = " ".join(cluster_config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "RAY_AUTH_MODE=token" in head_start
    assert "RAY_AUTH_MODE=token" in " ".join(cluster_config["worker_start_ray_commands"])
    assert "~/.ray/auth_token" in cluster_config["file_mounts"]


def test_cluster_yaml_first_comment_gives_the_commands():
    header = (ROOT / "cluster.yaml").read_text().split("\n\n")[0]
    for command in (
        "ray up cluster.yaml",
        "ray dashboard cluster.yaml",
        "raycls submit",
        "ray down cluster.yaml",
    ):
        assert command in header


def test_kuberay_rayjob_parses():
    job = yaml.safe_load((ROOT / "deploy" / "kuberay-rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["entrypoint"].startswith("raycls classify ")
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["headGroupSpec"]["template"]["spec"]["containers"]
    worker = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_kuberay_rayjob_requires_the_token_or_keeps_the_dashboard_on_loopback():
    job = yaml.safe_load((ROOT / "deploy" / "kuberay-rayjob.yaml").read_text())
    cluster = job["spec"]["rayClusterSpec"]
    head_params = cluster["headGroupSpec"]["rayStartParams"]
    token = (cluster.get("authOptions") or {}).get("mode") == "token"
    loopback = head_params.get("dashboard-host") == "127.0.0.1"
    assert token or loopback, "any pod reaching the head Service could submit jobs"
    if token:  # Ray enforces tokens from 2.52.0 on
        version = tuple(int(part) for part in cluster["rayVersion"].split(".")[:2])
        assert version >= (2, 52)
