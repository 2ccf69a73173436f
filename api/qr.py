"""QR codes as images (PNG or SVG), rendered with segno."""

from __future__ import annotations

import io
from functools import lru_cache

import segno

PNG = "image/png"
SVG = "image/svg+xml"


@lru_cache(maxsize=256)
def render(code: str, media_type: str) -> bytes:
    """The QR code for `code` as `media_type`; a code is rendered once, whoever asks."""
    qr = segno.make_qr(code, error="l")
    out = io.BytesIO()
    if media_type == PNG:
        qr.save(out, kind="png", scale=8, border=4)
    else:
        qr.save(out, kind="svg", scale=8, border=4, xmldecl=False)
    return out.getvalue()
