"""Pages rendered in headless Chromium, as a user's browser would: shared by the report tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def chromium() -> str | None:
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


def rendered_dom(page: Path, tmp_path: Path) -> str:
    """The DOM Chromium builds from `page`, with data-images / data-broken on <body>; fails on any console line."""
    browser = chromium()
    if browser is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium chromium-driver; `make test` installs it)")
    text = page.read_text().replace("default-src 'none';", "default-src 'none'; script-src 'unsafe-inline';")
    probe = ("<script>window.addEventListener('load', () => { const broken = [...document.images].filter("
             "i => !(i.complete && i.naturalWidth > 0)).length; document.body.dataset.images = document.images.length;"
             " document.body.dataset.broken = broken; if (broken) console.error('broken images: ' + broken); });</script>")  # fmt: skip
    check = tmp_path / f"check-{page.stem}.html"
    check.write_text(text.replace("</body>", probe + "</body>"))
    args = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0", "--dump-dom", check.as_uri()]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console
    return done.stdout
