"""Errors of the analytics package. Each carries fields, not only a message.

Metric functions are pure: given arrays of the wrong shape or an impossible parameter they raise a subclass
of :class:`AnalyticsError`; missing or implausible *values* (NaN, out-of-range heart rates) are not errors,
they make the affected metric NaN for that session only.
"""

from __future__ import annotations

from vitalab.errors import VitalabError


class AnalyticsError(VitalabError):
    """Base of the analytics errors."""


class BatchShapeError(AnalyticsError):
    """A :class:`analytics.batch.SessionBatch` (or the arrays given to a metric) is not well formed.

    ``field`` names the offending array ("offsets", "t_s", "rr_offsets", "kind" ...), ``detail`` says what
    is wrong and ``session`` is the index of the first session concerned when the problem is in one session.
    """

    def __init__(self, field: str, detail: str, session: int | None = None) -> None:
        where = f" (session {session})" if session is not None else ""
        super().__init__(f"{field}: {detail}{where}")
        self.field = field
        self.detail = detail
        self.session = session


class MetricParameterError(AnalyticsError):
    """A metric was called with an impossible parameter (a negative window, an unknown formula name ...)."""

    def __init__(self, parameter: str, value: object, detail: str) -> None:
        super().__init__(f"{parameter}={value!r}: {detail}")
        self.parameter = parameter
        self.value = value
        self.detail = detail


class SessionInputError(AnalyticsError):
    """Session assembly or a per-participant/per-site function got malformed input (helper-4's modules).

    ``field`` names the offending array or parameter, ``detail`` says what is wrong."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail


class AnalyticsJobError(AnalyticsError):
    """The incremental analytics job could not run (``stage`` names the step, ``detail`` why)."""

    def __init__(self, stage: str, detail: str) -> None:
        super().__init__(f"analytics job, {stage}: {detail}")
        self.stage = stage
        self.detail = detail
