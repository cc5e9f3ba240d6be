"""Parsing XML that came from a file: no DTD, no entities, bounded size.

OME-XML never needs a document type declaration, and a DTD is how XML
bombs (entity expansion) and external entities get in; refusing any DTD
closes both without a new dependency. Expat then knows only the five
predefined entities.
"""

from __future__ import annotations

from xml.etree import ElementTree

MAX_XML_BYTES = 512 * 1024 * 1024


def parse_xml(text: str | bytes, *, max_bytes: int = MAX_XML_BYTES) -> ElementTree.Element:
    """Parse `text`; ValueError for a DTD, an oversized or a malformed document."""
    if len(text) > max_bytes:
        raise ValueError(f"XML of {len(text)} bytes exceeds the {max_bytes} allowed")
    probe = text if isinstance(text, str) else text.decode("utf-8", "replace")
    if "<!DOCTYPE" in probe or "<!ENTITY" in probe:
        raise ValueError("XML with a document type declaration is refused")
    try:
        return ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        raise ValueError(f"the XML cannot be parsed: {exc}") from exc
