"""Vendor of a MAC address from the offline IEEE OUI table shipped in the package (no network, ever).

Owns the lookup; the table is loaded once, lazily.  Locally administered addresses have no vendor.
"""

from __future__ import annotations

import gzip
from functools import cache
from importlib import resources


@cache
def _table() -> dict[str, str]:
    data = resources.files("sensor").joinpath("data/oui.tsv.gz").read_bytes()
    fields = gzip.decompress(data).decode("utf-8").strip("\n").replace("\n", "\t").split("\t")
    return dict(zip(fields[::2], fields[1::2]))  # "prefix<TAB>vendor" lines, no tab in a vendor


def vendor(mac: str) -> str | None:
    """'00:1b:1b:..' -> 'Siemens AG'; None for unknown, locally administered or group addresses."""
    prefix = mac.replace(":", "").replace("-", "").lower()[:6]
    if len(prefix) < 6 or int(prefix[:2], 16) & 0x03:
        return None
    return _table().get(prefix)
