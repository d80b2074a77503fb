"""AWS EventBridge schedule expressions: ``rate(...)`` and ``cron(...)``, and their fire times.

:func:`parse` turns an expression into a :class:`Schedule`; a schedule answers
"when do I fire next after *t*?" in UTC::

    >>> from datetime import datetime, UTC
    >>> parse("cron(0 18 ? * MON-FRI *)").next_after(datetime(2024, 3, 15, 18, 0, tzinfo=UTC))
    datetime.datetime(2024, 3, 18, 18, 0, tzinfo=datetime.timezone.utc)

The syntax is AWS's, not Unix cron's: six fields (the last is the year), day
of week 1-7 with 1 = Sunday, and ``?`` in exactly one of day-of-month and
day-of-week. ``docs/cron.md`` lists what is accepted and the choices made
where AWS's documentation is silent; in short:

- ``rate()`` fire times are anchored at the Unix epoch (AWS anchors them at
  the rule's creation time), so every process computes the same fire times.
- ``L``, ``W`` and ``#`` follow Quartz, the scheduler AWS's syntax comes
  from: ``L``, ``L-n``, ``LW``, ``nW`` in day-of-month; ``L``, ``nL``,
  ``n#k`` in day-of-week. Each must be the whole field.
- A range may wrap past the end of its field (``FRI-MON``, ``22-2``),
  except in the year field.
- Nothing fires after 2199, AWS's last year: ``next_after`` returns ``None``.
"""

from __future__ import annotations

import calendar
import itertools
import re
from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from types import MappingProxyType
from typing import Final, Literal, Protocol

from dispatch.core.errors import ConfigurationError

__all__ = [
    # parsing
    "parse",
    # the contract and its two implementations
    "Schedule",
    "CronSchedule",
    "RateSchedule",
    # errors
    "InvalidScheduleError",
]

FIRST_YEAR: Final = 1970
LAST_YEAR: Final = 2199
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
"""Where ``rate()`` schedules are anchored: they fire at ``EPOCH + k * period``."""

_ONE_MINUTE: Final = timedelta(minutes=1)


class InvalidScheduleError(ConfigurationError):
    """A schedule expression AWS would refuse; ``field`` names the bad part.

    ``field`` is one of ``minutes``, ``hours``, ``day-of-month``, ``month``,
    ``day-of-week``, ``year`` (cron) or ``value``, ``unit`` (rate), or ``None``
    when the expression as a whole is malformed.
    """

    def __init__(self, message: str, *, expression: str, field: str | None = None) -> None:
        super().__init__(f"invalid schedule expression {expression!r}: {message}")
        self.expression = expression
        self.field = field


class Schedule(Protocol):
    """When something fires. All times are timezone-aware; results are in UTC.

    Naive datetimes are refused with :class:`ValueError`: a schedule cannot
    guess which clock they were read from.
    """

    @property
    def expression(self) -> str:
        """The normalised expression, e.g. ``cron(0 18 ? * MON-FRI *)``."""
        ...

    def next_after(self, t: datetime) -> datetime | None:
        """The first fire time strictly after *t*, or ``None`` if there is none."""
        ...

    def iter_after(self, t: datetime) -> Iterator[datetime]:
        """Every fire time strictly after *t*, in order (endless unless the schedule ends)."""
        ...

    def fire_times_between(self, start: datetime, end: datetime) -> Iterator[datetime]:
        """The fire times in ``(start, end]``: after *start*, up to and including *end*."""
        ...


# --- rate() ------------------------------------------------------------------

RateUnit = Literal["minutes", "hours", "days"]

_RATE_UNITS: Final[Mapping[str, RateUnit]] = MappingProxyType(
    {
        "minute": "minutes",
        "minutes": "minutes",
        "hour": "hours",
        "hours": "hours",
        "day": "days",
        "days": "days",
    }
)


@dataclass(frozen=True, slots=True)
class RateSchedule:
    """``rate(value unit)``: fires every ``value`` minutes, hours or days.

    Fire times are ``origin + k * period`` for every integer ``k``; ``origin``
    is the Unix epoch unless you pass another one (AWS itself anchors a rate
    rule at the time it was created, which no other process can know).
    """

    value: int
    unit: RateUnit
    origin: datetime = EPOCH

    def __post_init__(self) -> None:
        if self.value < 1:
            raise ValueError(f"a rate needs a positive value, got {self.value}")
        _as_utc(self.origin)

    @property
    def expression(self) -> str:
        """``rate(1 hour)``, ``rate(5 minutes)``: singular only when the value is 1."""
        unit = self.unit[:-1] if self.value == 1 else self.unit
        return f"rate({self.value} {unit})"

    @property
    def period(self) -> timedelta:
        """The time between two fire times."""
        return timedelta(**{self.unit: self.value})

    def next_after(self, t: datetime) -> datetime | None:
        """The first ``origin + k * period`` strictly after *t*."""
        elapsed_periods = (_as_utc(t) - self.origin) // self.period
        try:
            return (self.origin + (elapsed_periods + 1) * self.period).astimezone(UTC)
        except OverflowError:  # past datetime.max: no representable fire time
            return None

    def iter_after(self, t: datetime) -> Iterator[datetime]:
        """Every fire time strictly after *t*; endless."""
        return _iterate(self, _as_utc(t))

    def fire_times_between(self, start: datetime, end: datetime) -> Iterator[datetime]:
        """The fire times in ``(start, end]``."""
        return _between(self, start, end)


# --- cron() ------------------------------------------------------------------


class _DayRule(Protocol):
    """Which days of a given month a cron expression fires on."""

    def days_in(self, year: int, month: int) -> list[int]:
        """The matching days of the month, ascending (possibly none)."""
        ...


@dataclass(frozen=True, slots=True)
class _DaysOfMonth:
    """``1,15``, ``1-7``, ``*/2``... in day-of-month; days past the month's end never fire."""

    days: tuple[int, ...]

    def days_in(self, year: int, month: int) -> list[int]:
        last = calendar.monthrange(year, month)[1]
        return [day for day in self.days if day <= last]


@dataclass(frozen=True, slots=True)
class _LastDayOfMonth:
    """``L`` (last day), ``L-n`` (n days before it), ``LW`` / ``L-nW`` (nearest weekday to it)."""

    offset: int
    nearest_weekday: bool

    def days_in(self, year: int, month: int) -> list[int]:
        last = calendar.monthrange(year, month)[1]
        day = last - self.offset
        if day < 1:
            return []
        return [_nearest_weekday(year, month, day) if self.nearest_weekday else day]


@dataclass(frozen=True, slots=True)
class _NearestWeekday:
    """``15W``: the weekday (Mon-Fri) nearest the 15th, never leaving the month."""

    day: int

    def days_in(self, year: int, month: int) -> list[int]:
        if self.day > calendar.monthrange(year, month)[1]:
            return []
        return [_nearest_weekday(year, month, self.day)]


@dataclass(frozen=True, slots=True)
class _DaysOfWeek:
    """``MON-FRI``, ``1,7``, ``L`` (= 7, Saturday)... in AWS numbering, 1 = Sunday."""

    weekdays: tuple[int, ...]

    def days_in(self, year: int, month: int) -> list[int]:
        first, last = _aws_weekday(year, month, 1), calendar.monthrange(year, month)[1]
        return [day for day in range(1, last + 1) if (first + day - 2) % 7 + 1 in self.weekdays]


@dataclass(frozen=True, slots=True)
class _LastWeekdayOfMonth:
    """``6L``: the last Friday of the month."""

    weekday: int

    def days_in(self, year: int, month: int) -> list[int]:
        last = calendar.monthrange(year, month)[1]
        return [last - (_aws_weekday(year, month, last) - self.weekday) % 7]


@dataclass(frozen=True, slots=True)
class _NthWeekdayOfMonth:
    """``3#2``: the second Tuesday of the month (none in a month without a fifth one)."""

    weekday: int
    nth: int

    def days_in(self, year: int, month: int) -> list[int]:
        first_match = 1 + (self.weekday - _aws_weekday(year, month, 1)) % 7
        day = first_match + 7 * (self.nth - 1)
        return [day] if day <= calendar.monthrange(year, month)[1] else []


@dataclass(frozen=True, slots=True)
class CronSchedule:
    """``cron(minutes hours day-of-month month day-of-week year)``, expanded.

    Build it with :func:`parse`. ``minutes``, ``hours``, ``months`` and
    ``years`` hold the matching values in ascending order; ``days`` decides the
    days of each month (from whichever of day-of-month and day-of-week is not
    ``?``).
    """

    expression: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: _DayRule
    months: tuple[int, ...]
    years: tuple[int, ...]

    def next_after(self, t: datetime) -> datetime | None:
        """The first matching minute strictly after *t*; ``None`` once the years run out.

        It walks year, month, day, hour and minute in turn, taking the first
        allowed value at or after the start at each level, so it touches at
        most a few thousand months even for an expression that never fires.
        """
        start = _as_utc(t)
        if start.year > LAST_YEAR:
            return None
        start = start.replace(second=0, microsecond=0) + _ONE_MINUTE
        for year in _at_or_after(self.years, start.year):
            in_start_year = year == start.year
            for month in _at_or_after(self.months, start.month if in_start_year else 1):
                in_start_month = in_start_year and month == start.month
                days = self.days.days_in(year, month)
                for day in _at_or_after(days, start.day if in_start_month else 1):
                    found = self._first_time_on(year, month, day, start)
                    if found is not None:
                        return found
        return None

    def iter_after(self, t: datetime) -> Iterator[datetime]:
        """Every fire time strictly after *t*, ending after the last one in 2199 at the latest."""
        return _iterate(self, _as_utc(t))

    def fire_times_between(self, start: datetime, end: datetime) -> Iterator[datetime]:
        """The fire times in ``(start, end]``."""
        return _between(self, start, end)

    def _first_time_on(self, year: int, month: int, day: int, start: datetime) -> datetime | None:
        """The first matching hour:minute on this day not before *start*."""
        on_start_day = (year, month, day) == (start.year, start.month, start.day)
        for hour in _at_or_after(self.hours, start.hour if on_start_day else 0):
            in_start_hour = on_start_day and hour == start.hour
            for minute in _at_or_after(self.minutes, start.minute if in_start_hour else 0):
                return datetime(year, month, day, hour, minute, tzinfo=UTC)
        return None


@dataclass(frozen=True, slots=True)
class _Field:
    """One cron field: its name (as AWS spells it), its bounds and what it accepts."""

    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # names[i] stands for low + i
    steps: bool = True  # accepts "/"
    wraps: bool = True  # a range such as 22-2 runs past `high` back to `low`

    @property
    def size(self) -> int:
        return self.high - self.low + 1


_MINUTES: Final = _Field("minutes", 0, 59)
_HOURS: Final = _Field("hours", 0, 23)
_DAY_OF_MONTH: Final = _Field("day-of-month", 1, 31)
_MONTH: Final = _Field(
    "month",
    1,
    12,
    names=("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"),
)
_DAY_OF_WEEK: Final = _Field(
    "day-of-week", 1, 7, names=("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"), steps=False
)
_YEAR: Final = _Field("year", FIRST_YEAR, LAST_YEAR, wraps=False)

_CRON_FIELDS: Final = (_MINUTES, _HOURS, _DAY_OF_MONTH, _MONTH, _DAY_OF_WEEK, _YEAR)
_SHAPE: Final = re.compile(r"(cron|rate)\((.*)\)", re.DOTALL)
_LAST_DAY: Final = re.compile(r"L(?:-([0-9]+))?(W?)")
_NEAREST_WEEKDAY: Final = re.compile(r"([0-9]+)W")
_LAST_WEEKDAY: Final = re.compile(r"([0-9]+|[A-Z]{3})L")
_NTH_WEEKDAY: Final = re.compile(r"([0-9]+|[A-Z]{3})#([0-9]+)")
_MAX_LAST_DAY_OFFSET: Final = 30
_MAX_NTH: Final = 5


def parse(expression: str) -> Schedule:
    """Parse an EventBridge schedule expression, refusing what AWS would refuse.

    Raises :class:`InvalidScheduleError` naming the bad field and value.
    """
    shape = _SHAPE.fullmatch(expression.strip())
    if shape is None:
        raise InvalidScheduleError(
            "expected rate(value unit) or cron(minutes hours day-of-month month day-of-week year)",
            expression=expression,
        )
    kind, body = shape.groups()
    if kind == "rate":
        return _parse_rate(body, expression)
    return _parse_cron(body, expression)


def _parse_rate(body: str, expression: str) -> RateSchedule:
    parts = body.split()
    if len(parts) != 2:
        raise InvalidScheduleError(
            "expected rate(value unit), e.g. rate(5 minutes)", expression=expression
        )
    value_text, unit_text = parts
    if not (value_text.isascii() and value_text.isdigit()) or int(value_text) == 0:
        raise InvalidScheduleError(
            f"value {value_text!r} is not a positive whole number",
            expression=expression,
            field="value",
        )
    value = int(value_text)
    unit = _RATE_UNITS.get(unit_text)
    if unit is None:
        raise InvalidScheduleError(
            f"unit {unit_text!r} is not one of minute(s), hour(s), day(s)",
            expression=expression,
            field="unit",
        )
    singular = unit_text != unit  # the canonical unit is the plural
    if singular != (value == 1):
        wanted = unit[:-1] if value == 1 else unit
        raise InvalidScheduleError(
            f"unit {unit_text!r} must be {wanted!r} with the value {value} "
            "(AWS wants the singular for 1 and the plural otherwise)",
            expression=expression,
            field="unit",
        )
    try:
        timedelta(**{unit: value})
    except OverflowError as exc:
        raise InvalidScheduleError(
            f"value {value} is too large: {value} {unit} does not fit in a timedelta",
            expression=expression,
            field="value",
        ) from exc
    return RateSchedule(value, unit)


def _parse_cron(body: str, expression: str) -> CronSchedule:
    fields = body.upper().split()
    if len(fields) != len(_CRON_FIELDS):
        raise InvalidScheduleError(
            f"cron needs 6 fields (minutes hours day-of-month month day-of-week year), "
            f"got {len(fields)}",
            expression=expression,
        )
    minutes, hours, day_of_month, month, day_of_week, year = fields
    # keyword arguments are evaluated in order, so the first bad field is the one reported
    return CronSchedule(
        expression=f"cron({' '.join(fields)})",
        minutes=_parse_values(minutes, _MINUTES, expression),
        hours=_parse_values(hours, _HOURS, expression),
        days=_parse_days(day_of_month, day_of_week, expression),
        months=_parse_values(month, _MONTH, expression),
        years=_parse_values(year, _YEAR, expression),
    )


def _parse_days(day_of_month: str, day_of_week: str, expression: str) -> _DayRule:
    """The rule of whichever day field is not ``?``; AWS wants exactly one ``?``."""
    if day_of_month == "?" and day_of_week == "?":
        raise InvalidScheduleError(
            "day-of-month and day-of-week are both '?': one of them must say which days "
            "(for every day, use '*' in day-of-month)",
            expression=expression,
            field="day-of-month",
        )
    if day_of_month != "?" and day_of_week != "?":
        bad = _DAY_OF_MONTH if day_of_month == "*" else _DAY_OF_WEEK
        value = day_of_month if bad is _DAY_OF_MONTH else day_of_week
        raise InvalidScheduleError(
            f"{bad.name} {value!r} must be '?': AWS cannot combine day-of-month "
            f"{day_of_month!r} with day-of-week {day_of_week!r}, one of them must be '?'",
            expression=expression,
            field=bad.name,
        )
    if day_of_month == "?":
        return _parse_day_of_week(day_of_week, expression)
    return _parse_day_of_month(day_of_month, expression)


def _parse_day_of_month(text: str, expression: str) -> _DayRule:
    last_day = _LAST_DAY.fullmatch(text)
    if last_day is not None:
        offset = int(last_day.group(1) or 0)
        if offset > _MAX_LAST_DAY_OFFSET:
            raise _field_error(
                _DAY_OF_MONTH,
                text,
                f"the offset in L-n must be at most {_MAX_LAST_DAY_OFFSET}",
                expression,
            )
        return _LastDayOfMonth(offset, nearest_weekday=bool(last_day.group(2)))
    nearest = _NEAREST_WEEKDAY.fullmatch(text)
    if nearest is not None:
        return _NearestWeekday(_parse_value(nearest.group(1), _DAY_OF_MONTH, expression))
    if "L" in text or "W" in text:
        raise _field_error(
            _DAY_OF_MONTH,
            text,
            "L and W must be the whole field: L, L-n, LW, L-nW or nW",
            expression,
        )
    return _DaysOfMonth(_parse_values(text, _DAY_OF_MONTH, expression))


def _parse_day_of_week(text: str, expression: str) -> _DayRule:
    if text == "L":
        return _DaysOfWeek((_DAY_OF_WEEK.high,))
    last = _LAST_WEEKDAY.fullmatch(text)
    if last is not None:
        return _LastWeekdayOfMonth(_parse_value(last.group(1), _DAY_OF_WEEK, expression))
    nth = _NTH_WEEKDAY.fullmatch(text)
    if nth is not None:
        weekday = _parse_value(nth.group(1), _DAY_OF_WEEK, expression)
        occurrence = int(nth.group(2))
        if not 1 <= occurrence <= _MAX_NTH:
            raise _field_error(
                _DAY_OF_WEEK, text, f"the n in #n must be between 1 and {_MAX_NTH}", expression
            )
        return _NthWeekdayOfMonth(weekday, occurrence)
    if "#" in text:
        raise _field_error(
            _DAY_OF_WEEK,
            text,
            "'#' allows a single expression such as 3#2, alone in the field",
            expression,
        )
    if "L" in text:
        raise _field_error(_DAY_OF_WEEK, text, "L must be the whole field: L or nL", expression)
    return _DaysOfWeek(_parse_values(text, _DAY_OF_WEEK, expression))


def _parse_values(text: str, spec: _Field, expression: str) -> tuple[int, ...]:
    """Expand a list of ``*``, ``n``, ``a-b``, each with an optional ``/step``."""
    values: set[int] = set()
    for item in text.split(","):
        base, slash, step_text = item.partition("/")
        if slash and not spec.steps:
            raise _field_error(spec, text, "'/' is not allowed in this field", expression)
        step = _parse_step(step_text, spec, text, expression) if slash else 1
        if base == "*":
            first, last = spec.low, spec.high
        elif "-" in base:
            first_text, _, last_text = base.partition("-")
            first = _parse_value(first_text, spec, expression)
            last = _parse_value(last_text, spec, expression)
        else:
            first = _parse_value(base, spec, expression)
            last = spec.high if slash else first
        if last < first and not spec.wraps:
            raise _field_error(spec, text, "a range in this field cannot wrap around", expression)
        values.update(_expand(first, last, step, spec))
    return tuple(sorted(values))


def _parse_value(text: str, spec: _Field, expression: str) -> int:
    if text in spec.names:
        return spec.low + spec.names.index(text)
    if not (text.isascii() and text.isdigit()):
        expected = f"{spec.low}-{spec.high}"
        if spec.names:
            expected += f" or {spec.names[0]}-{spec.names[-1]}"
        raise _field_error(spec, text, f"is not a value (expected {expected})", expression)
    value = int(text)
    if not spec.low <= value <= spec.high:
        raise _field_error(spec, text, f"is out of range {spec.low}-{spec.high}", expression)
    return value


def _parse_step(text: str, spec: _Field, field_text: str, expression: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= spec.size:
        raise _field_error(
            spec,
            field_text,
            f"the step after '/' must be a number from 1 to {spec.size}",
            expression,
        )
    return int(text)


def _expand(first: int, last: int, step: int, spec: _Field) -> Iterator[int]:
    """``first, first+step, ...`` up to ``last``, wrapping past ``spec.high`` if last < first."""
    if last < first:
        last += spec.size
    for value in range(first, last + 1, step):
        yield value if value <= spec.high else value - spec.size


def _field_error(spec: _Field, text: str, reason: str, expression: str) -> InvalidScheduleError:
    separator = " " if reason.startswith("is ") else ": "
    return InvalidScheduleError(
        f"{spec.name} {text!r}{separator}{reason}", expression=expression, field=spec.name
    )


# --- shared helpers ----------------------------------------------------------


def _as_utc(t: datetime) -> datetime:
    """*t* in UTC; a naive datetime is refused rather than guessed at."""
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(
            f"naive datetime {t.isoformat()} given: pass a timezone-aware one, "
            "e.g. datetime.now(UTC)"
        )
    return t.astimezone(UTC)


def _at_or_after(values: Sequence[int], lowest: int) -> Sequence[int]:
    """The tail of the ascending *values* from the first one >= *lowest*."""
    return values[bisect_left(values, lowest) :]


def _aws_weekday(year: int, month: int, day: int) -> int:
    """AWS's day-of-week number: 1 = Sunday ... 7 = Saturday."""
    return (date(year, month, day).weekday() + 1) % 7 + 1


def _nearest_weekday(year: int, month: int, day: int) -> int:
    """Quartz's ``W``: a Saturday moves to Friday, a Sunday to Monday, within the month."""
    last = calendar.monthrange(year, month)[1]
    weekday = date(year, month, day).weekday()  # Monday = 0
    if weekday == calendar.SATURDAY:
        return day + 2 if day == 1 else day - 1
    if weekday == calendar.SUNDAY:
        return day - 2 if day == last else day + 1
    return day


def _iterate(schedule: Schedule, t: datetime) -> Iterator[datetime]:
    current = schedule.next_after(t)
    while current is not None:
        yield current
        current = schedule.next_after(current)


def _between(schedule: Schedule, start: datetime, end: datetime) -> Iterator[datetime]:
    end_utc = _as_utc(end)
    return itertools.takewhile(lambda fire: fire <= end_utc, schedule.iter_after(start))
