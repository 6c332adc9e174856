"""Client for a Twilio-shaped Calls API: a phone call that reads a short text aloud.

For customers whose number cannot take an SMS (a landline) or who asked to be called. The call
carries its TwiML inline (``Twiml``), so no webhook of ours has to serve it; the text is built
from invoice data an ERP sent, so it goes in as XML text, never as markup. Answers are sorted
as for SMS (:class:`~factura.sms_sender.provider.TwilioClient`), under the dependency ``voice``.
"""

from __future__ import annotations

import re
from typing import Final
from xml.etree import ElementTree as ET

from factura.common.events import Locale
from factura.sms_sender.provider import TwilioClient

DEPENDENCY: Final = "voice"
#: Characters XML 1.0 cannot carry at all, even escaped (control characters, lone surrogates).
_NOT_XML: Final = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_BCP47: Final = re.compile(r"^[a-z]{2,3}-[A-Z]{2}$")
_LANGUAGES: Final[dict[Locale, str]] = {"es": "es-ES", "pt": "pt-PT", "en": "en-US", "ro": "ro-RO"}


def say_language(locale: Locale, country: str) -> str:
    """The BCP 47 tag ``<Say>`` speaks for a customer: Brazilian Portuguese in Brazil, else European."""
    return "pt-BR" if locale == "pt" and country == "BR" else _LANGUAGES[locale]


def twiml_say(text: str, language: str) -> str:
    """``<Response><Say language="…">text</Say></Response>`` with ``text`` escaped as XML text."""
    if not _BCP47.match(language):
        raise ValueError(f"not a BCP 47 language-REGION tag: {language!r}")
    response = ET.Element("Response")
    ET.SubElement(response, "Say", language=language).text = _NOT_XML.sub("", text)
    return ET.tostring(response, encoding="unicode")


class VoiceProvider(TwilioClient):
    dependency = DEPENDENCY

    async def send(self, to: str, text: str, *, language: str, status_callback: str | None = None) -> str:
        """The call sid once the provider accepted the call (a 2xx); ``language`` e.g. ``"es-ES"``.

        Accepted is not answered: ``status_callback`` receives the outcome (``completed``,
        ``no-answer``, ``busy``, ``failed``) when the call ends.
        """
        form = {"To": to, "From": self._s.from_number, "Twiml": twiml_say(text, language)}
        if status_callback:
            form["StatusCallback"] = status_callback
        return await self._create("Calls", form)
