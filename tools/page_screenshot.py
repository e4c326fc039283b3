"""The README's picture of the map page: the bundled captures, as `otsensor demo` serves them, in Chromium.

    python tools/page_screenshot.py [--out docs/map.png] [--width 1600 --height 950]

Replays pcaps/ (not pcaps/bad/) into a temporary DB, serves it with the real server on a free loopback
port, signs in with a fresh token in Debian's headless /usr/bin/chromium (Playwright), opens the
connection on which an engineering station sent `PLC Stop`, and saves the window as a PNG.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from api import create_app  # noqa: E402
from api.auth import create_token  # noqa: E402
from api.cli import demo_captures  # noqa: E402
from api.server import ApiServer  # noqa: E402
from sensor import serialize  # noqa: E402
from sensor.replay import replay  # noqa: E402
from sensor.store import Store  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "map.png")
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=950)
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as folder:
        store = Store(Path(folder) / "demo.duckdb")
        replay([str(p) for p in demo_captures()], store, progress=False)
        token = create_token(store, "screenshot")
        stop = next(
            c["id"]
            for c in json.loads(serialize.connections_json(store.cursor()))
            if any("PLC Stop" in p["commands"] for p in c["protocols"])
        )
        server = ApiServer(create_app(store, {"generation": lambda: 0}), "127.0.0.1", 0)
        server.prepare()
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(
                    executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-background-networking"]
                )
                page = browser.new_page(viewport={"width": args.width, "height": args.height})
                page.goto(server.url + "/")
                page.fill("#token", token)
                page.click("#sign-in-form button[type=submit]")
                page.wait_for_function("() => window.otsensorPage.status().changes > 0")
                at = page.evaluate(f"() => window.otsensorPage.pagePosition('c:{stop}')")
                page.mouse.click(at["x"], at["y"])
                page.locator("[data-testid=connection-detail]").wait_for()
                page.wait_for_timeout(300)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out))
                browser.close()
        finally:
            server.stop()
            thread.join(10)
            store.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
