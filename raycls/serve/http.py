"""The HTTP side of serving, without Ray: read a bounded body, split it into images, check the
bearer token, and map a failed image to its status code. Errors carry the status to answer.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator, Mapping
from email.parser import BytesParser
from email.policy import HTTP

# decode_image's messages for input that is no image at all (io.images); other failures
# (truncated, corrupt, over max_pixels) are images that cannot be used: 422.
NOT_AN_IMAGE = ("not an image", "empty file")
TEXT_FIELD = "text"


class RequestError(Exception):
    """A request the server refuses; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def token_digest(token: str) -> str:
    """sha256 hex of a bearer token: what the server keeps and compares."""
    return hashlib.sha256(token.encode()).hexdigest()


def read_token_file(path: str) -> str:
    """The token in `path` (first line, stripped); a clear error if it is missing or empty."""
    try:
        with open(path, encoding="utf-8") as f:
            token = f.readline().strip()
    except OSError as err:
        raise ValueError(f"--token-file {path!r} cannot be read: {err}") from err
    if len(token) < 16:
        raise ValueError(
            f"--token-file {path!r} holds a token of {len(token)} characters; use at least 16 "
            "random ones, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    return token


def check_token(headers: Mapping[str, str], token_sha256: str | None) -> None:
    """Raise 401 unless `Authorization: Bearer <token>` matches (constant-time compare)."""
    if token_sha256 is None:
        return
    scheme, _, given = headers.get("authorization", "").partition(" ")
    digest = token_digest(given.strip()) if scheme.lower() == "bearer" else ""
    if not hmac.compare_digest(digest.encode(), token_sha256.encode()):
        raise RequestError(401, "missing or wrong bearer token (header Authorization: Bearer ...)")


async def read_body(chunks: AsyncIterator[bytes], content_length: str | None, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit` bytes."""
    too_big = f"request body is over the limit of {limit:,} bytes; send fewer or smaller images"
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise RequestError(400, f"bad Content-Length header {content_length!r}") from None
        if declared > limit:
            raise RequestError(413, too_big)
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise RequestError(413, too_big)
    return bytes(body)


def split_images(
    body: bytes, content_type: str | None, max_images: int
) -> tuple[list[str], list[bytes], list[str | None]]:
    """Names, bytes and optional texts of the images in a request.

    A multipart/form-data body holds one image per file part (named by its filename) and,
    optionally, `text` fields paired with the images in order (alt-text, as classify's
    --text-column). Any other body is one image, named "image".
    """
    if not (content_type or "").lower().startswith("multipart/"):
        return ["image"], [body], [None]
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    if not message.is_multipart() or message.defects:
        raise RequestError(400, f"malformed multipart body ({len(body)} bytes): {message.defects}")
    names: list[str] = []
    images: list[bytes] = []
    texts: list[str] = []
    for part in message.iter_parts():
        field = part.get_param("name", header="content-disposition")
        data = part.get_payload(decode=True) or b""
        if field == TEXT_FIELD and part.get_filename() is None:
            texts.append(data.decode("utf-8", errors="replace"))
        else:
            names.append(part.get_filename() or str(field or f"image{len(images)}"))
            images.append(data)
    if not images:
        raise RequestError(400, "multipart body holds no image parts")
    if len(images) > max_images:
        raise RequestError(413, f"{len(images)} images in one request; the limit is {max_images}")
    if texts and len(texts) != len(images):
        raise RequestError(
            400, f"{len(texts)} '{TEXT_FIELD}' fields for {len(images)} images: give one each "
            "(an empty one for none) or none at all"
        )  # fmt: skip
    return names, images, texts or [None] * len(images)


def error_status(message: str) -> int:
    """415 for bytes that are no image at all, 422 for an image that cannot be used."""
    return 415 if message.startswith(NOT_AN_IMAGE) else 422


def response_status(rows: list[dict]) -> int:
    """200 when any image was classified (rows say which failed), else the failures' status."""
    if any(row["status"] == "ok" for row in rows):
        return 200
    return max(error_status(row["error"] or "") for row in rows)
