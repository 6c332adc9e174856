"""Contact data masked out of free text that belongs to no known customer, so it cannot be encrypted
under a customer's data key: refused or unmatched webhook bodies (DSNs, SMS status callbacks), a
provider's words about a suppressed address.

What is masked: email addresses (``bob@example.com`` and the form-encoded ``bob%40example.com``)
keep only their domain, which says which mailbox provider answered and names no one;
international phone numbers (``+34 612 34 56 78``, form-encoded ``%2B34612345678``) become
:data:`PHONE`; the values of the header lines that name recipients (``To``, ``Cc``, ``Bcc``,
``Reply-To``: display names) become :data:`HIDDEN`. Factura's own Message-IDs
(``<event uuid>.<channel>@domain``) look like addresses but name a message, not a person, and are
kept: they are what tells an operator which delivery a report was about.

What is not: a name in running text ("Your message to Juan Pérez could not be delivered"), a
national number without its ``+`` (providers' callbacks use E.164). Records holding masked text
therefore still expire (``webhook_log`` keeps them 30 days).
"""

from __future__ import annotations

import re
from typing import Final

PHONE: Final = "[phone]"
HIDDEN: Final = "[hidden]"
LOCAL: Final = "***"

_EMAIL: Final = re.compile(
    r"(?<![\w.%+'-])(?P<local>[\w.%+!#$&'*/=?^`{|}~-]+)(?P<at>@|%40)(?P<domain>(?:[\w-]+\.)+[^\W\d_]{2,})(?![\w-])"
)
_OWN_MESSAGE_ID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.[a-z]+")
_PHONE: Final = re.compile(r"(?<![\w%])(?:\+|%2[Bb])[1-9](?:[ .()-]?\d){6,14}(?!\d)")
_RECIPIENT_HEADER: Final = re.compile(
    r"^(?P<name>To|Cc|Bcc|Reply-To)[ \t]*:[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*", re.IGNORECASE | re.MULTILINE
)


def _email(match: re.Match[str]) -> str:
    if _OWN_MESSAGE_ID.fullmatch(match["local"]):
        return match[0]
    return f"{LOCAL}{match['at']}{match['domain']}"


def mask_contacts(text: str) -> str:
    """``text`` with email addresses, phone numbers and recipient header values masked."""
    text = _RECIPIENT_HEADER.sub(lambda m: f"{m['name']}: {HIDDEN}", text)
    return _PHONE.sub(PHONE, _EMAIL.sub(_email, text))


def mask_address(address: str) -> str:
    """What may be shown of an address nobody can decrypt: its domain, or nothing."""
    masked = mask_contacts(address)
    return masked if masked != address else HIDDEN
