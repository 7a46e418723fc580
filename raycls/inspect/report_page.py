"""The HTML of `raycls report`, from what raycls.inspect.report gathered."""

from __future__ import annotations

from typing import Any

from raycls.inspect import page

SECTIONS = ("summary", "counts", "scores", "gallery", "errors")  # the ids the Chromium check wants
ERROR_GROUPS = 50


def _summary(out_dir: str, manifest: dict[str, Any], total: int, ctx: dict) -> str:
    run = manifest.get("summary") or {}
    identity = manifest.get("identity") or {}
    errors = sum(e[0] for e in ctx["errors"].values())
    rows = [
        ("output", out_dir),
        ("model", run.get("model") or manifest.get("model_dir", "unknown")),
        ("input", identity.get("input", "unknown")),
        ("rows", f"{total:,} ({total - errors:,} ok, {errors:,} errors)"),
        ("run complete", "yes" if manifest.get("complete") else "no (or no manifest)"),
        ("started", manifest.get("started", "unknown")),
        ("time of the last run", f"{run['seconds']:,} s" if "seconds" in run else "unknown"),
        (
            "images/s of the last run",
            f"{run['images_per_s']:,}" if run.get("images_per_s") else "unknown",
        ),
        ("captioner", identity.get("captioner") or "none"),
    ]
    return page.table(["", ""], [[page.esc(k), page.esc(v)] for k, v in rows])


def _by_count(ctx: dict) -> list[int]:
    """Label indices, most rows first."""
    return sorted(range(len(ctx["labels"])), key=lambda i: (-ctx["counts"][i], ctx["labels"][i]))


def _scores(ctx: dict) -> str:
    rows = []
    for i in _by_count(ctx):
        name = ctx["labels"][i]
        p10, p50, p90 = ctx["quantiles"][i]
        rows.append(
            [
                page.esc(name),
                f"{int(ctx['counts'][i]):,}",
                f"{ctx['mean'][i]:.3f}",
                f"{p10:.3f} / {p50:.3f} / {p90:.3f}",
                page.histogram_svg(ctx["hist"][i].tolist()),
            ]
        )
    return page.table(["label", "rows", "mean", "p10 / median / p90", "scores 0 to 1"], rows)


def _card(ctx: dict, ref: tuple[int, int], what: str) -> str:
    detail = ctx["details"].get(ref, {})
    key = detail.get("key") or ""
    lines = [
        f"{what} {detail.get('score', 0.0):.3f}" if "score" in detail else what,
        page.short_name(key),
    ]
    if detail.get("caption"):
        lines.append(f'<span class="cap">{page.esc(detail["caption"])}</span>')
    image = page.image_tag(ctx["thumbs"].get(key), key, "no thumbnail")
    return page.card(f'<div title="{page.esc(key)}">{image}</div>', lines)


def _gallery(ctx: dict) -> str:
    if not ctx["sample"]:
        return '<p class="muted">thumbnails off (--thumbnails 0)</p>'
    parts = []
    for label in _by_count(ctx):
        high, low = ctx["sample"][label]
        refs = [(int(ctx["files"][i]), int(ctx["rows"][i])) for i in (*high, *low)]
        cards = [_card(ctx, r, "score") for r in refs[: len(high)]]
        lows = [_card(ctx, r, "score") for r in refs[len(high) :]]
        parts.append(
            f"<h3>{page.esc(ctx['labels'][label])} ({int(ctx['counts'][label]):,} rows)</h3>"
            f"<p>highest scores</p>{page.gallery(cards)}<p>lowest scores</p>{page.gallery(lows)}"
        )
    return "\n".join(parts)


def _errors(ctx: dict) -> str:
    if not ctx["errors"]:
        return '<p class="muted">no error rows</p>'
    groups = sorted(ctx["errors"].values(), key=lambda e: -e[0])
    rows = []
    for count, message, refs in groups[:ERROR_GROUPS]:
        keys = [ctx["details"].get(r, {}).get("key") or "?" for r in refs]
        rows.append([f"{count:,}", page.esc(message), "<br>".join(page.esc(k) for k in keys)])
    more = len(groups) - ERROR_GROUPS
    more = f"<p class=muted>{more} more kinds not shown</p>" if more > 0 else ""
    return page.table(["rows", "message (one example)", "example rows"], rows) + more


def render_report(out_dir: str, manifest: dict[str, Any], total: int, ctx: dict) -> str:
    """The whole report page."""
    counts = {name: int(ctx["counts"][i]) for i, name in enumerate(ctx["labels"])}
    sections = [
        page.section("summary", "Run", _summary(out_dir, manifest, total, ctx)),
        page.section("counts", "Rows per label", page.bars(counts) if counts else "none"),
        page.section("scores", "Score distribution per label", _scores(ctx)),
        page.section("gallery", "Gallery per label", _gallery(ctx)),
        page.section("errors", "Error rows by message", _errors(ctx)),
    ]
    return page.document(f"raycls report: {out_dir}", sections)
