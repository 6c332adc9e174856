"""Who is behind a hit on a tracked link: a person, an email client's proxy, or a machine.

Mail security gateways (Barracuda, Mimecast, Proofpoint URL Defense, Microsoft Defender Safe Links,
Cisco IronPort, ...) and chat apps (link previews) fetch every link of a message on arrival; counted
as clicks they would "prove" that customers opened invoices they never saw. Our own table comes
first: email-security vendors and email clients that generic crawler lists miss or get wrong (they
list Outlook and Gmail's image proxy as crawlers). Anything else goes through ``crawlerdetect``
(JayBizzle's CrawlerDetect patterns, ~1,500 bots) before being called a browser.

Email clients fetching the open pixel, and whether the open counts as a person:

* Gmail's ``GoogleImageProxy`` fetches the image when the user opens the message (then caches
  it): **human** (the first open is real; later ones are hidden by the cache).
* Yahoo's ``YahooMailProxy`` behaves the same: **human**.
* Apple Mail Privacy Protection preloads every image through Apple's proxies when the message
  arrives, whether or not it is ever read, with the bare user agent ``Mozilla/5.0``:
  **automated** (``apple_mpp_prefetch``). An open seen only this way proves delivery, not reading.
* Desktop and mobile Outlook and Thunderbird load images when the user views the message: **human**.

Many gateways disguise themselves as an ordinary browser: the tracking endpoint's time window
after sending and HEAD requests catch those; this module only reads the user agent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from crawlerdetect import CrawlerDetect

UserAgentClass = Literal["browser", "mobile", "email_client", "scanner", "bot", "unknown"]


@dataclass(frozen=True)
class Agent:
    """The verdict on one user agent; ``reason`` names the rule for automated ones (audit evidence)."""

    ua_class: UserAgentClass
    automated: bool
    reason: str | None = None


def _rule(pattern: str, ua_class: UserAgentClass, reason: str | None) -> tuple[re.Pattern[str], Agent]:
    return re.compile(pattern, re.IGNORECASE), Agent(ua_class, reason is not None, reason)


#: Ordered: the first match wins. Reasons are ``<kind>:<name>`` and appear in tracking events.
RULES: tuple[tuple[re.Pattern[str], Agent], ...] = (
    # Email clients and their image proxies.
    _rule(r"GoogleImageProxy", "email_client", None),
    _rule(r"YahooMailProxy", "email_client", None),
    _rule(r"^Mozilla/5\.0$", "email_client", "apple_mpp_prefetch"),
    # Office checks a link before opening it (OPTIONS/HEAD): a machine, even if a person clicked.
    _rule(r"Microsoft Office (Existence|Protocol) Discovery|Microsoft-WebDAV", "bot", "preview:office-discovery"),
    _rule(r"Microsoft Outlook|MacOutlook|Outlook-(iOS|Android)|Thunderbird", "email_client", None),
    # Email security gateways and URL scanners.
    _rule(r"Barracuda", "scanner", "scanner:barracuda"),
    _rule(r"Mimecast", "scanner", "scanner:mimecast"),
    _rule(r"Proofpoint|urldefense", "scanner", "scanner:proofpoint"),
    _rule(r"Safe ?Links|ATP-?Scanner|Defender", "scanner", "scanner:microsoft-defender"),
    _rule(r"IronPort|Cisco[ -]?(ESA|Secure ?Email)", "scanner", "scanner:cisco-ironport"),
    _rule(r"Google-Safety|Safe ?Browsing", "scanner", "scanner:google-safe-browsing"),
    _rule(r"Trend ?Micro", "scanner", "scanner:trend-micro"),
    _rule(r"Sophos", "scanner", "scanner:sophos"),
    _rule(r"FireEye|Trellix", "scanner", "scanner:trellix"),
    _rule(r"Symantec|Broadcom", "scanner", "scanner:symantec"),
    _rule(r"Forcepoint|Websense", "scanner", "scanner:forcepoint"),
    _rule(r"Zscaler", "scanner", "scanner:zscaler"),
    _rule(r"Forti(Guard|net|Mail)", "scanner", "scanner:fortinet"),
    _rule(r"Check ?Point|Avanan", "scanner", "scanner:checkpoint"),
    _rule(r"Cloudmark|\bVade(Secure)?\b|Hornet ?Security|SpamTitan|Libraesva", "scanner", "scanner:mail-filter"),
    _rule(r"Palo ?Alto|WildFire", "scanner", "scanner:palo-alto"),
    # Link previews (chat apps, shorteners, social networks).
    _rule(r"bitlybot", "bot", "preview:bitly"),
    _rule(r"Slackbot|Slack-ImgProxy", "bot", "preview:slack"),
    _rule(r"WhatsApp", "bot", "preview:whatsapp"),
    _rule(r"TelegramBot", "bot", "preview:telegram"),
    _rule(r"facebookexternalhit|Facebot|meta-externalagent", "bot", "preview:facebook"),
    _rule(r"Twitterbot", "bot", "preview:twitter"),
    _rule(r"LinkedInBot", "bot", "preview:linkedin"),
    _rule(r"Discordbot", "bot", "preview:discord"),
    _rule(r"SkypeUriPreview|MicrosoftPreview|BingPreview", "bot", "preview:microsoft"),
    _rule(r"Viber", "bot", "preview:viber"),
    _rule(r"Iframely|Embedly|redditbot|Pinterest|vkShare|Snapchat|Google Web Preview", "bot", "preview:other"),
    # HTTP libraries and headless browsers: scripts, not people.
    _rule(r"HeadlessChrome|PhantomJS|Puppeteer|Playwright|Selenium", "bot", "tool:headless-browser"),
    _rule(
        r"^(curl|Wget|python-requests|python-urllib|Python/|python-httpx|aiohttp|Go-http-client|Java/|okhttp|"
        r"libwww-perl|PostmanRuntime|node-fetch|axios|undici|Scrapy|HTTPie)",
        "bot",
        "tool:http-library",
    ),
)
_MOBILE = re.compile(r"Mobi|Android|iPhone|iPad|iPod", re.IGNORECASE)
_BROWSER = re.compile(r"^Mozilla/\d|^Opera", re.IGNORECASE)
_CRAWLERS = CrawlerDetect()


def classify(user_agent: str | None) -> Agent:
    """The class of ``user_agent`` and whether it is a machine; see the module docstring for the rules."""
    agent = (user_agent or "").strip()
    if not agent:
        return Agent("unknown", True, "no_user_agent")  # every browser and mail client sends one
    for pattern, verdict in RULES:
        if pattern.search(agent):
            return verdict
    if _CRAWLERS.is_crawler(agent):
        return Agent("bot", True, "crawler")
    if _MOBILE.search(agent):
        return Agent("mobile", False)
    if _BROWSER.search(agent):
        return Agent("browser", False)
    return Agent("unknown", False)
