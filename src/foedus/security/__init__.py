"""Security features that are not tied to one transport: signed messages (``signing``)."""
