"""What `raycls submit` uploads: code and configs, never secrets, data or outputs (no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from raycls.cluster import submit, upload

ROOT = Path(__file__).resolve().parents[1]

CODE = ["pyproject.toml", "raycls/__init__.py", "raycls/models/classifier.py", "jobs/classify.py",
        "configs/base.yaml"]  # fmt: skip
SECRETS = [".env", ".env.production", "configs/.env", "deploy.pem", "tls.key", "id_rsa",
           "id_ed25519.pub", ".aws/credentials", ".ssh/config", "gcp-credentials.json",
           "raycls/.netrc"]  # fmt: skip
DATA = ["data/train/cat/1.jpg", "models/best/model.safetensors", "out/part-000000.parquet",
        "quickstart/shapes/x.png", "runs/r1/metrics.json", ".git/HEAD", ".venv/bin/python",
        "raycls/__pycache__/x.pyc", "weights.pt"]  # fmt: skip


def _tree(root: Path, names: list[str], size: int = 10) -> Path:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
    return root


def test_checkout_upload_holds_code_and_named_configs_only(tmp_path):
    root = _tree(tmp_path, [*CODE, *SECRETS, *DATA, "notes.txt", "my-run.yaml", "tests/t.py"])
    plan = upload.plan_upload(root, checkout=True, named=["train", "--config", "my-run.yaml"])
    assert sorted(plan.files) == sorted([*CODE, "my-run.yaml"])
    described = plan.describe()
    assert "Uploading 6 files (0.00 MiB)" in described and ".env" in described


def test_working_dir_upload_leaves_secrets_and_data_behind(tmp_path):
    root = _tree(tmp_path, [*CODE, *SECRETS, *DATA, "notes.txt", ".gitignore"])
    plan = upload.plan_upload(root, checkout=False)
    assert sorted(plan.files) == sorted([*CODE, "notes.txt"])  # .gitignore: Ray would apply it
    assert {plan.skipped[name] for name in (".env", ".aws", "tls.key", "id_rsa")} == {"secret"}
    assert plan.skipped["models"] == plan.skipped["raycls/__pycache__"] == "data"


def test_a_named_secret_still_stays_behind(tmp_path):
    root = _tree(tmp_path, [*CODE, ".env"])
    plan = upload.plan_upload(root, checkout=True, named=["classify", "--config=.env"])
    assert ".env" not in plan.files


def test_links_out_of_the_folder_are_not_followed(tmp_path):
    outside = _tree(tmp_path / "home", [".aws/credentials", "secret.txt"])
    root = _tree(tmp_path / "project", CODE)
    (root / "linked").symlink_to(outside, target_is_directory=True)
    (root / "notes.txt").symlink_to(outside / "secret.txt")
    assert sorted(upload.plan_upload(root, checkout=False).files) == sorted(CODE)


def test_uploads_past_the_limit_are_refused_with_the_biggest_files(tmp_path):
    root = _tree(tmp_path, CODE)
    _tree(root, ["configs/huge.yaml"], size=2 * 1024 * 1024)
    with pytest.raises(ValueError, match=r"configs/huge\.yaml \(2\.0 MiB\).*--max-upload-mb"):
        upload.plan_upload(root, checkout=True, max_mb=1)
    assert upload.plan_upload(root, checkout=True, max_mb=3).size > 2 * 1024 * 1024


def test_staged_folder_holds_exactly_the_planned_files(tmp_path):
    root = _tree(tmp_path / "project", [*CODE, *SECRETS, *DATA])
    plan = upload.plan_upload(root, checkout=False)
    with upload.staged(plan) as folder:
        staged = sorted(p.relative_to(folder).as_posix() for p in Path(folder).rglob("*"))
        assert [p for p in staged if Path(folder, p).is_file()] == sorted(plan.files)
    assert not Path(folder).exists()


def test_build_job_on_this_checkout_uploads_the_package_not_the_tree():
    entrypoint, runtime_env, plan = submit.build_job(["raycls", "classify", "s3://b/my images"])
    assert entrypoint == "python -m raycls classify 's3://b/my images'"
    assert "raycls/__init__.py" in plan.files and "jobs/classify.py" in plan.files
    assert not [name for name in plan.files if name.startswith(("tests/", "bench/", ".git"))]
    assert "working_dir" not in runtime_env  # submit_job adds the staged copy


def test_submit_refuses_credentials_inside_uris():
    with pytest.raises(ValueError, match="credentials inside a URI") as refused:
        submit.build_job(["classify", "s3://AKIA:s3cr3t@bucket/in", "--out", "s3://bucket/o"])
    assert "s3cr3t" not in str(refused.value) and "s3://***@bucket/in" in str(refused.value)


def test_cluster_yaml_syncs_what_submit_would_upload():
    """cluster.yaml's rsync_exclude lists every exclusion of raycls/cluster/upload.py."""
    excluded = yaml.safe_load((ROOT / "cluster.yaml").read_text())["rsync_exclude"]
    expected = [*upload.SECRET_FILES, *upload.DATA_FILES]
    expected += [f"{name}/" for name in (*upload.SECRET_DIRS, *upload.CACHE_DIRS)]
    expected += [f"/{name}/" for name in upload.DATA_DIRS]
    assert sorted(excluded) == sorted(expected)
