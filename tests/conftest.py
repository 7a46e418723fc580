"""Shared fixtures: one local Ray per test session, an S3 server, a temporary HOME; and the
rule that marks integration tests (`pytest -m "not integration"` runs the fast unit tests)."""

from __future__ import annotations

import importlib.util
import logging
import os

import pytest

# Tests never reach a model hub; everything they load is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

BUCKET = "raycls-test"
# A test that uses one of these (directly or through another fixture) is an integration test:
# a local Ray, a real `ray start --head`, an S3 server.
INTEGRATION_FIXTURES = ("ray_local", "ray_head", "s3")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark integration tests by the fixtures they use; slow tests count as integration too."""
    for item in items:
        uses = set(getattr(item, "fixturenames", ()))
        if uses & set(INTEGRATION_FIXTURES) or item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session", autouse=True)
def temp_home(tmp_path_factory):
    """HOME is a temporary folder for the whole session, set before Ray starts.

    Ray writes its cluster token to ~/.ray/auth_token (and other tools their caches under
    ~): tests must not touch the user's own, which the user's real clusters use.
    """
    home = tmp_path_factory.mktemp("home")
    # Matplotlib's font cache is the user's own: rebuilding it costs seconds per session.
    fonts = os.environ.get("MPLCONFIGDIR") or os.path.expanduser("~/.cache/matplotlib")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MPLCONFIGDIR", fonts)
        patch.setenv("HOME", str(home))
        patch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)  # else Ray would use the user's
        yield home


def _session_uses(request: pytest.FixtureRequest, fixture: str) -> bool:
    return any(fixture in getattr(item, "fixturenames", ()) for item in request.session.items)


@pytest.fixture(scope="session")
def ray_local(request):
    """One local Ray instance shared by the whole session."""
    import ray

    # Ray's processes (raylet, workers) inherit the environment of the process that starts
    # Ray and never see variables set later. So when a test of this session uses the S3
    # server, its endpoint goes into this process's environment before Ray starts: then the
    # driver (which commits classify's Parquet shards) and every worker (Ray Data reads,
    # Train's checkpoint uploads, Tune trials) all reach it. A job-level runtime_env would
    # have to be passed here as well, and would miss the driver.
    if _session_uses(request, "s3") and importlib.util.find_spec("moto") is not None:
        request.getfixturevalue("s3")
    if not ray.is_initialized():
        from raycls.cluster.runtime import start_local_ray

        start_local_ray(num_cpus=2)  # as raycls starts it: listening on loopback only
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3():
    """An in-process S3 server (moto) with an empty bucket; returns "s3://<bucket>".

    pyarrow's `FileSystem.from_uri`, which raycls and Ray Train/Tune use for URIs, takes the
    endpoint from AWS_ENDPOINT_URL; the other variables keep a developer's own AWS settings
    (profiles, instance metadata) out of the tests.
    """
    moto_server = pytest.importorskip("moto.server", reason="needs moto: pip install moto[server]")
    import pyarrow.fs
    import ray

    if ray.is_initialized():
        pytest.fail("Ray started before the S3 server: its workers lack the endpoint variables")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as patch:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            patch.delenv(name, raising=False)
        env = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }
        for name, value in env.items():
            patch.setenv(name, value)
        store = pyarrow.fs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True)
        store.create_dir(BUCKET)
        yield f"s3://{BUCKET}"
    server.stop()
