"""vitalab: smart-gym telemetry for living labs.

This package holds two layers. The contract every service agrees on, which imports nothing else of
vitalab's: the wire contract (`vitalab.wire`), the settings object (`vitalab.settings`), the database schema
and its migrations (`vitalab.db`), typed errors (`vitalab.errors`) and logging (`vitalab.logs`). And the
composition root, the only code that wires the services together: the command line (`vitalab.cli`),
`vitalab up` (`vitalab.platform`), the single-service runners (`vitalab.runners`) and their helpers
(`vitalab.embedded`, `vitalab.progress`, `vitalab.failures`). The services live in the sibling packages
`gateway`, `ingest`, `analytics`, `api` and `simulators`.
"""

__version__ = "0.1.0"
