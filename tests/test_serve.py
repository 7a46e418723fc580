"""raycls serve: request handling without Ray, then the server on loopback under load."""

from __future__ import annotations

import asyncio
import json
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from bad_images import MAX_PIXELS, corpus
from click.testing import CliRunner
from helpers import image_bytes, make_model, read_output

from raycls.cli import cli
from raycls.serve.http import (
    RequestError,
    check_token,
    error_status,
    read_body,
    response_status,
    split_images,
    token_digest,
)
from raycls.serve.settings import ServeSettings

TOKEN = "test-token-0123456789abcdef"
MAX_BODY = 256 << 10


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return make_model(tmp_path_factory.mktemp("model"))


def _multipart(parts: list[tuple[str, str | None, bytes]]) -> tuple[bytes, str]:
    """(field, filename or None, data) -> body and content type, as browsers send them."""
    boundary = "----raycls-test-boundary"
    body = b""
    for field, filename, data in parts:
        name = f'name="{field}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: form-data; {name}\r\n".encode()
        kind = "application/octet-stream" if filename else "text/plain"
        body += f"Content-Type: {kind}\r\n\r\n".encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


# Unit tests: no Ray.


def test_multipart_keeps_binary_bytes_names_and_texts():
    binary = bytes(range(256)) * 8 + b"\r\n--not-a-boundary\r\n" + image_bytes(3)
    body, kind = _multipart(
        [("file", "a.jpg", binary), ("text", None, b"a cat"), ("file", "b.png", b"\x89PNG"),
         ("text", None, b"")]
    )  # fmt: skip
    names, images, texts = split_images(body, kind, max_images=4)
    assert names == ["a.jpg", "b.png"] and images == [binary, b"\x89PNG"]
    assert texts == ["a cat", ""]
    assert split_images(b"raw", "image/jpeg", 4) == (["image"], [b"raw"], [None])
    with pytest.raises(RequestError) as err:
        split_images(body, kind, max_images=1)
    assert err.value.status == 413 and "limit is 1" in err.value.message
    one_text, kind = _multipart([("file", "a.jpg", b"x"), ("file", "b.jpg", b"y"),
                                 ("text", None, b"t")])  # fmt: skip
    with pytest.raises(RequestError, match="1 'text' fields for 2 images"):
        split_images(one_text, kind, 4)


def test_body_limit_token_and_statuses():
    async def body(chunks: list[bytes], length: str | None, limit: int) -> bytes:
        async def stream():
            for chunk in chunks:
                yield chunk

        return await read_body(stream(), length, limit)

    assert asyncio.run(body([b"ab", b"cd"], None, 4)) == b"abcd"
    for chunks, length in (([b"x"], "5"), ([b"abc", b"de"], None)):  # declared, or streamed
        with pytest.raises(RequestError) as err:
            asyncio.run(body(chunks, length, 4))
        assert err.value.status == 413 and "over the limit of 4 bytes" in err.value.message
    digest = token_digest(TOKEN)
    check_token({"authorization": f"Bearer {TOKEN}"}, digest)
    check_token({}, None)
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"Basic {TOKEN}"}):
        with pytest.raises(RequestError) as err:
            check_token(headers, digest)
        assert err.value.status == 401
    assert error_status("not an image: cannot identify format") == 415
    assert error_status("empty file (0 bytes)") == 415
    assert error_status("truncated or corrupt JPEG image: OSError") == 422
    ok, bad = {"status": "ok", "error": None}, {"status": "error", "error": "empty file"}
    assert response_status([ok, bad]) == 200 and response_status([bad]) == 415


def test_settings_and_cli_refuse_bad_values(model_dir, tmp_path):
    with pytest.raises(ValueError, match="autoscale=3,1"):
        ServeSettings(autoscale=(3, 1))
    with pytest.raises(ValueError, match="below max_batch_size"):
        ServeSettings(max_batch_size=64, max_ongoing_requests=8)
    runner = CliRunner()
    result = runner.invoke(cli, ["serve", model_dir, "--host", "0.0.0.0"])
    assert result.exit_code != 0 and "--token-file" in result.output
    result = runner.invoke(cli, ["serve", model_dir, "--replicas", "2", "--autoscale", "1,2"])
    assert result.exit_code != 0 and "not both" in result.output
    short = tmp_path / "token"
    short.write_text("abc\n")
    result = runner.invoke(cli, ["serve", model_dir, "--token-file", str(short)])
    assert result.exit_code != 0 and "at least 16" in result.output
    result = runner.invoke(cli, ["serve", model_dir, "classify.top_k=0"])
    assert result.exit_code != 0 and "top_k" in result.output
    result = runner.invoke(cli, ["serve", str(tmp_path), "--port", "1"])
    assert result.exit_code != 0 and "config.json" in result.output  # before Ray starts


def test_deployment_options_fixed_or_autoscaled():
    from raycls.serve.app import deployment_options

    fixed = deployment_options(ServeSettings(replicas=3, num_gpus=0.5, num_cpus=2))
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 0.5}
    scaled = deployment_options(ServeSettings(autoscale=(0, 4), max_batch_size=16))
    assert "num_replicas" not in scaled
    assert scaled["autoscaling_config"] == {
        "min_replicas": 0,
        "max_replicas": 4,
        "initial_replicas": 1,
        "target_ongoing_requests": 16,
    }


def test_predictor_rows_match_the_bulk_stage(model_dir):
    from raycls.bulk.stages import ClassifyStage, decode_rows
    from raycls.serve.predictor import Predictor

    settings = ServeSettings(top_k=2, max_batch_size=4, max_ongoing_requests=4)
    predictor = Predictor(model_dir, settings)
    images, texts = [image_bytes(i) for i in range(3)] + [b"junk"], ["a cat", None, "", None]
    items = predictor.decode(images, texts)
    assert [item["status"] for item in items] == ["ok", "ok", "ok", "error"]
    rows = predictor.predict(items[:3])
    batch = {"key": np.array(list("abcd"), dtype=object), "image": np.array(images, dtype=object),
             "error": np.full(4, None, dtype=object), "text": np.array(texts, dtype=object),
             "shard": np.zeros(4, np.int32), "shard_rows": np.full(4, 4, np.int32),
             "row": np.arange(4, dtype=np.int32)}  # fmt: skip
    (decoded,) = decode_rows(batch, size=32, max_pixels=settings.max_pixels)
    table = next(iter(ClassifyStage(model_dir, top_k=2)(decoded))).to_pylist()
    for row, expected in zip(rows, table[:3], strict=True):
        assert row["label"] == expected["label"] and row["status"] == "ok"
        assert row["top_k_scores"] == pytest.approx(expected["top_k_scores"], abs=1e-5)


# The server, on the session's local Ray.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening_hosts(port: int) -> set[str]:
    import psutil

    return {c.laddr.ip for c in psutil.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port}  # fmt: skip


def _bulk_results(folder: Path, model_dir: str, out: Path) -> dict[str, dict]:
    """What `raycls classify` writes for each file of `folder`, by file name."""
    args = ["classify", str(folder), "--model", model_dir, "--out", str(out), "--top-k", "3",
            f"classify.max_pixels={MAX_PIXELS}"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return {Path(row["path"]).name: row for row in read_output(out).to_pylist()}


@pytest.mark.integration
def test_server_under_load_matches_classify_and_survives_bad_input(ray_local, tmp_path, model_dir):
    import requests
    from ray import serve

    from raycls.serve.app import start_server

    files = {name: data for name, (data, _) in corpus().items()}
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    bulk = _bulk_results(folder, model_dir, tmp_path / "out")
    port = _free_port()
    settings = ServeSettings(port=port, max_pixels=MAX_PIXELS, top_k=3, max_batch_size=8,
                             max_body_bytes=MAX_BODY, token_sha256=token_digest(TOKEN))  # fmt: skip
    url = start_server(model_dir, settings)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        assert _listening_hosts(port) == {"127.0.0.1"}
        names = sorted(files)
        oversized = image_bytes(0, size=(48, 40)) + bytes(MAX_BODY)

        def send(i: int) -> None:
            name = names[i % len(names)]
            if i % 25 == 7:
                response = requests.post(f"{url}/v1/classify", data=oversized, headers=auth)
                assert response.status_code == 413, response.text
                return
            if i % 25 == 11:
                response = requests.post(f"{url}/v1/classify", data=files[name])
                assert response.status_code == 401
                return
            if i % 3 == 0:  # two images in one multipart request
                other = names[(i + 5) % len(names)]
                body, kind = _multipart([("f", name, files[name]), ("f", other, files[other])])
                response = requests.post(f"{url}/v1/classify", data=body,
                                         headers={**auth, "Content-Type": kind})  # fmt: skip
                sent = [name, other]
            else:
                response = requests.post(f"{url}/v1/classify", data=files[name], headers=auth)
                sent = [name]
            results = response.json()["results"]
            assert len(results) == len(sent)
            for key, row in zip(sent, results, strict=True):
                expected = bulk[key]
                assert (row["status"], row["label"], row["error"]) == (
                    expected["status"], expected["label"], expected["error"]
                ), key  # fmt: skip
                if row["status"] == "ok":
                    assert row["top_k_labels"] == expected["top_k_labels"]
                else:
                    assert row["http_status"] in (415, 422)
            if len(sent) == 1 and results[0]["status"] != "ok":
                assert response.status_code == results[0]["http_status"]
                assert response.status_code == error_status(bulk[name]["error"])
            elif any(r["status"] == "ok" for r in results):
                assert response.status_code == 200

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(send, range(200)))
        assert {bulk[n]["status"] for n in names} == {"ok", "error"}  # the mix was real
        assert requests.get(f"{url}/healthz").json() == {"status": "ok"}
        info = requests.get(f"{url}/v1/model", headers=auth).json()
        assert info["labels"] == ["cat", "dog", "bird"] and "token_sha256" not in info["settings"]
        status = serve.status().applications[settings.app_name]
        assert status.status == "RUNNING"
        assert status.deployments["classifier"].replica_states == {"RUNNING": 1}
        again = requests.post(f"{url}/v1/classify", data=files["good1.jpg"], headers=auth)
        assert again.status_code == 200 and again.json()["results"][0]["label"]
        assert requests.get(f"{url}/nowhere").status_code == 404
        assert requests.get(f"{url}/v1/classify", headers=auth).status_code == 405
    finally:
        serve.shutdown()


def test_json_is_plain(model_dir):
    """Result rows are JSON-serialisable as they come from the predictor (no numpy types)."""
    from raycls.serve.predictor import Predictor

    predictor = Predictor(model_dir, ServeSettings(max_batch_size=2, max_ongoing_requests=2))
    rows = predictor.predict(predictor.decode([image_bytes(5), image_bytes(6)], [None, None]))
    assert json.loads(json.dumps(rows))[0]["label"] in ["cat", "dog", "bird"]


def test_predictor_captions_images_without_text(model_dir, tmp_path):
    """With a captioner, rows without text get a caption and the classifier reads it."""
    from tiny_models import make_tiny_captioner

    from raycls.serve.predictor import Predictor

    captioner = make_tiny_captioner(tmp_path / "captioner")
    settings = ServeSettings(captioner=captioner, max_new_tokens=4, max_batch_size=4,
                             max_ongoing_requests=4)  # fmt: skip
    predictor = Predictor(model_dir, settings)
    rows = predictor.predict(predictor.decode([image_bytes(1), image_bytes(2)], ["a cat", None]))
    assert rows[0]["caption"] is None and isinstance(rows[1]["caption"], str)
    assert all(row["status"] == "ok" for row in rows)
