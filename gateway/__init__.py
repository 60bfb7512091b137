"""Device gateway: pure decoders and encoders for BLE FTMS / Heart Rate / Cycling Power / CSC and ANT+ FE-C /
HRM frames, and their mapping onto the wire contract (``vitalab.wire.Sample``).

Decoding is separate from transports: ``decode_frame(source, data, quirks=...)`` turns bytes into a frozen,
unit-suffixed record and raises nothing but ``gateway.errors.DecodeError``; ``encode_frame`` is its inverse;
``normalize.to_sample`` maps a record onto a Sample at a time the caller passes. A device's quirks are chosen
from its Device Information Service strings (``gateway.quirks.select``, ``gateway.dis``), or named by an
operator (``model=`` a profile of ``gateway.quirks.PROFILES``).
"""

from gateway.decode import (
    Record,
    canonical_source,
    decode_frame,
    encode_frame,
    record_to_json,
    source_of,
    sources,
)
from gateway.errors import DecodeError, EncodeError, FrameTooShort, InvalidFrame, UnknownSource
from gateway.normalize import to_sample, to_sample_with_notes

__all__ = [
    "DecodeError",
    "EncodeError",
    "FrameTooShort",
    "InvalidFrame",
    "Record",
    "UnknownSource",
    "canonical_source",
    "decode_frame",
    "encode_frame",
    "record_to_json",
    "source_of",
    "sources",
    "to_sample",
    "to_sample_with_notes",
]
