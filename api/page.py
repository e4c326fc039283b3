"""The network map page (contract section 5): ``GET /`` and its files under ``/web/``, shipped in api/web/.

Owns serving those files and the page's security headers; never reads the DB — the page's data comes
from the API, called by the browser with the token the user pastes.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, send_from_directory

WEB = Path(__file__).resolve().parent / "web"
# The page's rules for the browser: its scripts, styles, data calls and images come from this origin only
# (air-gapped plants; no CDN), no inline script or style, no plugins, and no other site may frame it.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",  # the icon; the PNG and CSV exports are downloads of blob: URLs, not images
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate CSP 2
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), usb=(), serial=()",
}

blueprint = Blueprint("page", __name__)


@blueprint.get("/")
def index():
    return _file("index.html")


@blueprint.get("/web/<path:name>")
def asset(name: str):
    return _file(name)


def _file(name: str):
    # send_from_directory refuses paths that leave WEB (404); no-cache: after an upgrade the browser
    # revalidates (Last-Modified) instead of mixing old and new files
    response = send_from_directory(WEB, name, max_age=0)
    response.headers["Cache-Control"] = "no-cache"
    return response


@blueprint.after_request
def _security_headers(response):
    response.headers.update(SECURITY_HEADERS)
    return response
