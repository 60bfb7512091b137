"""vitalab: smart-gym telemetry for living labs.

This shared package holds what every service agrees on: the wire contract (`vitalab.wire`), the settings
object (`vitalab.settings`), the database schema and its migrations (`vitalab.db`) and the command line
(`vitalab.cli`). Services live in the sibling packages `gateway`, `ingest`, `analytics`, `api` and
`simulators`.
"""

__version__ = "0.1.0"
