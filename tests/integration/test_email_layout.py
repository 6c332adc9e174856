"""The customer email as a person sees it: every purpose and language in headless Chromium, at the
600 px the layout is designed for and at a 360 px phone width.

Chromium is Debian's (``/usr/bin/chromium``, installed by ``scripts/system-deps.sh``), driven by
Playwright; Playwright's own browser download is never used. The CID logo is swapped for a data:
URI (a browser cannot resolve ``cid:``), and every network request is refused, so the page shows
exactly what the message carries. Screenshots land in a temporary folder named in the output.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Error, Page, Route, sync_playwright

from factura.common.tenants import TenantConfig
from tests.unit.test_email_message import CASES, MARKETS, build, html_of, notice, tenant, write_logo

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WIDTHS = (600, 360)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One browser for every case. Failing to start it fails the test: the check must not vanish."""
    with sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        except Error as e:
            pytest.fail(f"headless Chromium ({CHROMIUM}) could not be launched; run scripts/system-deps.sh: {e}")
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def pages(browser: Browser) -> Iterator[dict[int, Page]]:
    def offline(route: Route) -> None:
        route.abort()  # the open pixel and links: nothing leaves the machine

    opened = {}
    for width in WIDTHS:
        page = browser.new_page(viewport={"width": width, "height": 900})
        page.route("http*://**/*", offline)
        opened[width] = page
    yield opened
    for page in opened.values():
        page.close()


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TenantConfig]:
    """A tenant with a PNG logo (shown as a CID image) and one with an SVG logo (shown as its name)."""
    folder = tmp_path_factory.mktemp("tenant")
    write_logo(folder / "logo.png")
    (folder / "logo.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    return {
        "png": tenant(folder, logo="logo.png"),
        "svg": tenant(folder, logo="logo.svg", primary_color="#0f766e", font_family="DejaVu Serif"),
    }


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("email-screenshots")
    print(f"\nemail screenshots: {folder}")
    return folder


def browsable(html: str, logo: Path) -> str:
    data = base64.b64encode(logo.read_bytes()).decode()
    return html.replace("cid:434888e1.email.logo@harinas-sur.test", f"data:image/png;base64,{data}")


@pytest.mark.parametrize("lang", list(MARKETS))
@pytest.mark.parametrize("case", list(CASES))
def test_layout_fits_and_the_payment_button_shows(
    case: str, lang: str, pages: dict[int, Page], tenants: dict[str, TenantConfig], screenshots: Path
) -> None:
    branded = tenants["png" if lang in ("es", "ro") else "svg"]
    assert branded.directory is not None
    html = browsable(html_of(build(notice(case, lang), branded)), branded.directory / "logo.png")
    for width, page in pages.items():
        page.set_content(html, wait_until="load")
        inner, scroll = page.evaluate("[window.innerWidth, document.documentElement.scrollWidth]")
        assert (inner, scroll <= inner) == (width, True), f"{case}/{lang} is {scroll}px wide in a {width}px viewport"
        card = page.locator(".card").bounding_box()
        assert card is not None and card["width"] <= 600
        button = page.locator("#pay")
        if case == "receipt":
            assert button.count() == 0
        else:
            assert button.is_visible()
            box = button.bounding_box()
            assert box is not None and box["width"] > 0 and box["height"] >= 40
            assert box["x"] >= 0 and box["x"] + box["width"] <= width
            if width < 600:  # the phone rule makes the button a full-width tap target
                assert box["width"] >= width * 0.7
        logo = page.locator("img.logo")
        if branded is tenants["png"]:
            assert logo.evaluate("i => i.complete && i.naturalWidth") == 400  # the image, not a broken icon
        else:
            assert logo.count() == 0 and page.locator(".wordmark").is_visible()
        page.screenshot(path=screenshots / f"{case}-{lang}-{width}.png", full_page=True)
