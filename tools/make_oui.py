"""Regenerate sensor/data/oui.tsv.gz, the offline MAC-prefix -> vendor table shipped in the package.

Source: Wireshark's `manuf` file (compiled from the IEEE MA-L/MA-M/MA-S registries), installed with
tshark at /usr/share/wireshark/manuf.  Only 24-bit (MA-L) prefixes are kept: they name the vendor of
nearly every device; the longer MA-M/MA-S blocks are left out to keep the table small.
Usage: python tools/make_oui.py [/usr/share/wireshark/manuf]
"""

import gzip
import sys
from pathlib import Path

source = Path(sys.argv[1] if len(sys.argv) > 1 else "/usr/share/wireshark/manuf")
rows = []
for line in source.read_text(encoding="utf-8").splitlines():
    if not line or line.startswith("#"):
        continue
    fields = line.split("\t")
    prefix = fields[0]
    if len(fields) < 2 or "/" in prefix or len(prefix) != 8:
        continue
    vendor = (fields[2] if len(fields) > 2 else fields[1]).strip().rstrip(",")
    rows.append(f"{prefix.replace(':', '').lower()}\t{vendor}")
target = Path(__file__).resolve().parent.parent / "sensor" / "data" / "oui.tsv.gz"
with gzip.GzipFile(target, "wb", mtime=0) as out:
    out.write(("\n".join(rows) + "\n").encode("utf-8"))
print(f"{len(rows)} prefixes -> {target}")
