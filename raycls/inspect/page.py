"""Static HTML pieces shared by the explain, report and evaluation pages: one style, no script,
images embedded as data URIs so a page is one file that opens anywhere without a server.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from raycls.io.images import ImageDecodeError, decode_image

THUMBNAIL_PX = 112
STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1200px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em}td,th{padding:3px 8px;border:1px solid #e3e3e3;
text-align:left;vertical-align:top}th{background:#f6f6f6}
.bar{background:#4a7bd0;height:14px;display:inline-block}.num{text-align:right}
.gallery{display:flex;flex-wrap:wrap;gap:8px}.card{width:122px;font-size:.75em;overflow-wrap:anywhere}
.card img,.noimg{width:112px;height:112px;object-fit:contain;background:#eee;display:block}
.noimg{display:flex;align-items:center;justify-content:center;color:#888;text-align:center}
td>img{width:128px;height:128px;object-fit:contain;image-rendering:pixelated}
.cap{color:#555;font-style:italic}.muted{color:#777}svg{display:block}
"""


def esc(value: object) -> str:
    """HTML-escaped text of any value (None as an empty string)."""
    return "" if value is None else html.escape(str(value))


def document(title: str, sections: Sequence[str]) -> str:
    """A whole HTML page: `title` and the sections' HTML in order."""
    body = "\n".join(sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}'
        f"</title><style>{STYLE}</style></head><body><h1>{esc(title)}</h1>\n{body}\n</body></html>"
    )


def section(anchor: str, heading: str, content: str) -> str:
    """A titled section with an id (the Chromium check looks for these ids)."""
    return f'<section id="{anchor}"><h2>{esc(heading)}</h2>\n{content}\n</section>'


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table of cells that are already HTML (escape text with `esc`)."""
    head = "<tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>" if any(header) else ""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def bars(counts: dict[str, int], width_px: int = 400) -> str:
    """A horizontal bar chart of counts per name, largest first."""
    top = max(counts.values(), default=0) or 1
    rows = [
        [
            esc(name),
            f'<span class="bar" style="width:{max(1, round(width_px * n / top))}px"></span> {n:,}',
        ]
        for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    return table(["label", "rows"], rows)


def histogram_svg(counts: Sequence[int], width: int = 200, height: int = 40) -> str:
    """Bars of a histogram over [0, 1] as an inline SVG, with its axis ends labelled."""
    top = max(counts, default=0) or 1
    step = width / max(len(counts), 1)
    rects = "".join(
        f'<rect x="{i * step:.1f}" y="{height - height * c / top:.1f}" width="{step - 1:.1f}" '
        f'height="{height * c / top:.1f}" fill="#4a7bd0"/>'
        for i, c in enumerate(counts)
    )
    return (
        f'<svg width="{width}" height="{height + 12}" role="img"><title>score histogram</title>'
        f'{rects}<text x="0" y="{height + 11}" font-size="9">0</text>'
        f'<text x="{width - 6}" y="{height + 11}" font-size="9">1</text></svg>'
    )


def data_uri(png_or_jpeg: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(png_or_jpeg).decode()}"


def image_tag(uri: str | None, alt: str, placeholder: str = "no image") -> str:
    """<img> for a data URI or relative path; a grey box saying `placeholder` for None."""
    if uri is None:
        return f'<div class="noimg">{esc(placeholder)}</div>'
    return f'<img src="{esc(uri)}" alt="{esc(alt)}">'


def thumbnail(data: bytes | None, size: int = THUMBNAIL_PX) -> str | None:
    """A JPEG data URI of the image in `data` fitted into size x size; None if undecodable."""
    if not data:
        return None
    try:
        im = decode_image(data)
    except ImageDecodeError:
        return None
    im.thumbnail((size, size))
    return data_uri(encode_image(im, "JPEG"), "image/jpeg")


def encode_image(im: Image.Image | np.ndarray, fmt: str = "PNG") -> bytes:
    """PNG or JPEG bytes of a Pillow image or an HxWx3 uint8 array."""
    if isinstance(im, np.ndarray):
        im = Image.fromarray(im)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return buf.getvalue()


def card(image: str, lines: Sequence[str]) -> str:
    """A gallery card: an image tag and lines of HTML under it."""
    return f'<div class="card">{image}' + "".join(f"<div>{ln}</div>" for ln in lines) + "</div>"


def short_name(key: str) -> str:
    """The last part of a path, URI or `file#row` key, as HTML with the whole key as its title."""
    return f'<span class="muted" title="{esc(key)}">{esc(key.rsplit("/", 1)[-1])}</span>'


def gallery(cards: Sequence[str]) -> str:
    return f'<div class="gallery">{"".join(cards)}</div>' if cards else '<p class="muted">none</p>'
