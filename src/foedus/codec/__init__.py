"""The wire format: how a :class:`~foedus.core.message.Message` becomes bytes and back."""

from foedus.codec.wire import DEFAULT_MAX_SIZE, FORMAT_VERSION, decode, encode

__all__ = ["DEFAULT_MAX_SIZE", "FORMAT_VERSION", "decode", "encode"]
