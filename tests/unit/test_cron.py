"""EventBridge schedule expressions: AWS's examples, edge cases, refusals, and a brute-force check.

The property tests compare :mod:`dispatch.tasks.cron` with a reference written here
from scratch: each generated field carries its own set of values (or its own
day rule), and the reference walks forward minute by minute until every field
matches.
"""

from __future__ import annotations

import calendar
import doctest
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from itertools import islice, pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.core.errors import ConfigurationError, DispatchError
from dispatch.tasks import cron
from dispatch.tasks.cron import CronSchedule, InvalidScheduleError, RateSchedule, parse

ONE_MINUTE = timedelta(minutes=1)
ONE_DAY = timedelta(days=1)
DOCS = Path(__file__).resolve().parents[2] / "docs" / "cron.md"


def at(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, *, second: int = 0
) -> datetime:
    """A UTC datetime, short enough to read in a table."""
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


# --- AWS's documented examples, checked by hand against a calendar -------------
# 2024-03-15 is a Friday; 2024-04-01 and 2024-03-18 are Mondays; 1970-01-01 was a Thursday.

AWS_EXAMPLES = [
    # 10:00 every day
    ("cron(0 10 * * ? *)", at(2024, 3, 15, 9, 30), [at(2024, 3, 15, 10), at(2024, 3, 16, 10)]),
    # 12:15 every day; a fire time equal to t is not "after" t
    ("cron(15 12 * * ? *)", at(2024, 3, 15, 12, 15), [at(2024, 3, 16, 12, 15)]),
    # 18:00 Monday to Friday: from Friday 18:00 the next is Monday
    (
        "cron(0 18 ? * MON-FRI *)",
        at(2024, 3, 15, 18),
        [at(2024, 3, 18, 18), at(2024, 3, 19, 18)],
    ),
    # 08:00 on the 1st of every month, across a short February
    ("cron(0 8 1 * ? *)", at(2024, 1, 31, 8), [at(2024, 2, 1, 8), at(2024, 3, 1, 8)]),
    # every 15 minutes, from a time with seconds
    (
        "cron(0/15 * * * ? *)",
        at(2024, 3, 15, 9, 31, second=10),
        [at(2024, 3, 15, 9, 45), at(2024, 3, 15, 10), at(2024, 3, 15, 10, 15)],
    ),
    # every 10 minutes Monday to Friday: Friday 23:50 is the last of the week
    (
        "cron(0/10 * ? * MON-FRI *)",
        at(2024, 3, 15, 23, 45),
        [at(2024, 3, 15, 23, 50), at(2024, 3, 18, 0, 0), at(2024, 3, 18, 0, 10)],
    ),
    # every 5 minutes 08:00-17:55 Monday to Friday
    (
        "cron(0/5 8-17 ? * MON-FRI *)",
        at(2024, 3, 15, 17, 52),
        [at(2024, 3, 15, 17, 55), at(2024, 3, 18, 8), at(2024, 3, 18, 8, 5)],
    ),
    # 09:00 on the first Monday of every month (April 1, May 6, June 3 in 2024)
    (
        "cron(0 9 ? * 2#1 *)",
        at(2024, 3, 15, 9, 30),
        [at(2024, 4, 1, 9), at(2024, 5, 6, 9), at(2024, 6, 3, 9)],
    ),
    # rates, anchored at the Unix epoch
    (
        "rate(5 minutes)",
        at(2024, 3, 15, 9, 32, second=10),
        [at(2024, 3, 15, 9, 35), at(2024, 3, 15, 9, 40)],
    ),
    ("rate(1 hour)", at(2024, 3, 15, 10), [at(2024, 3, 15, 11), at(2024, 3, 15, 12)]),
    ("rate(7 days)", at(2024, 3, 15, 9, 30), [at(2024, 3, 21), at(2024, 3, 28)]),
]


@pytest.mark.parametrize(("expression", "after", "expected"), AWS_EXAMPLES)
def test_aws_documented_examples_fire_when_aws_says(
    expression: str, after: datetime, expected: list[datetime]
) -> None:
    """Given an example from AWS's docs, the next fire times are the hand-checked ones."""
    schedule = parse(expression)

    fires = list(islice(schedule.iter_after(after), len(expected)))

    assert fires == expected
    assert schedule.next_after(after) == expected[0]


def test_every_example_in_the_docs_table_is_right() -> None:
    """Each row of the examples table in docs/cron.md gives the true next fire time."""
    row = re.compile(r"^\| `((?:cron|rate)\(.*?\))` \| .* \| (\d{4}-\d\d-\d\d \d\d:\d\d) \|$")
    after = at(2024, 3, 15, 9, 30)
    rows = [m.groups() for line in DOCS.read_text().splitlines() if (m := row.match(line))]

    assert len(rows) >= 11  # AWS's eleven examples at least
    for expression, expected in rows:
        got = parse(expression).next_after(after)
        assert got == datetime.fromisoformat(expected).replace(tzinfo=UTC), expression


def test_module_docstring_example_runs() -> None:
    """The example in dispatch.tasks.cron's docstring is true (doctest)."""
    result = doctest.testmod(cron)

    assert result.attempted > 0
    assert result.failed == 0


# --- the day letters: L, W, # ----------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        # L is Feb 29 in a leap year, Feb 28 otherwise
        ("cron(0 12 L FEB ? *)", at(2023, 3, 1), [at(2024, 2, 29, 12), at(2025, 2, 28, 12)]),
        # the 29th of February only in leap years
        ("cron(0 12 29 2 ? *)", at(2024, 3, 1), [at(2028, 2, 29, 12)]),
        # June 1st 2024 is a Saturday: 1W moves forward to Monday the 3rd, not back into May
        ("cron(0 12 1W * ? 2024)", at(2024, 5, 31), [at(2024, 6, 3, 12), at(2024, 7, 1, 12)]),
        # September 1st 2024 is a Sunday: Monday the 2nd
        ("cron(0 12 1W 9 ? *)", at(2024, 8, 1), [at(2024, 9, 2, 12)]),
        # March 31st 2024 is a Sunday and the last day: back to Friday the 29th
        ("cron(0 12 31W 3 ? *)", at(2024, 3, 1), [at(2024, 3, 29, 12)]),
        # 31W skips months without a 31st (April), fires on May 31st (a Friday)
        ("cron(0 12 31W * ? *)", at(2024, 4, 1), [at(2024, 5, 31, 12)]),
        # LW: the last weekday; August 31st 2024 is a Saturday
        ("cron(0 12 LW * ? *)", at(2024, 8, 1), [at(2024, 8, 30, 12), at(2024, 9, 30, 12)]),
        # L-30 exists only in 31-day months (the 1st) and skips February entirely
        ("cron(0 12 L-30 * ? *)", at(2024, 1, 2), [at(2024, 3, 1, 12), at(2024, 5, 1, 12)]),
        # the fifth Thursday: March and April 2024 have four, May has five
        ("cron(0 12 ? * 5#5 *)", at(2024, 3, 15), [at(2024, 5, 30, 12)]),
        # 6L: the last Friday
        ("cron(0 12 ? * FRIL *)", at(2024, 3, 15), [at(2024, 3, 29, 12), at(2024, 4, 26, 12)]),
        # L alone in day-of-week is Saturday (7)
        ("cron(0 12 ? * L *)", at(2024, 3, 15), [at(2024, 3, 16, 12), at(2024, 3, 23, 12)]),
    ],
)
def test_day_letters_follow_quartz_semantics(
    expression: str, after: datetime, expected: list[datetime]
) -> None:
    """Given L, W or # in a day field, the fire days are the hand-checked ones."""
    assert list(islice(parse(expression).iter_after(after), len(expected))) == expected


def test_wrapping_ranges_apply_to_each_field_separately() -> None:
    """Given FRI-MON and 22-2, hours 22..2 fire on Fri..Mon (not a Friday-to-Monday window)."""
    schedule = parse("cron(0 22-2 ? * FRI-MON *)")

    fires = list(islice(schedule.iter_after(at(2024, 3, 18, 1, 30)), 4))  # a Monday

    assert fires == [at(2024, 3, 18, 2), at(2024, 3, 18, 22), at(2024, 3, 18, 23), at(2024, 3, 22)]


def test_a_step_continues_across_a_wrapping_range() -> None:
    """Given 22-2/2 in hours, the hours are 22, 0 and 2."""
    schedule = parse("cron(0 22-2/2 * * ? *)")

    assert isinstance(schedule, CronSchedule)
    assert schedule.hours == (0, 2, 22)


def test_names_and_letters_are_case_insensitive() -> None:
    """Given lower-case names and letters, the schedule equals the upper-case one."""
    assert parse("cron(0 12 ? jan-Mar mon-fri *)") == parse("cron(0 12 ? JAN-MAR MON-FRI *)")
    assert parse("cron(0 12 lw * ? *)") == parse("cron(0 12 LW * ? *)")


def test_expression_is_normalised() -> None:
    """Given extra spaces, lower case or leading zeros, ``expression`` is the tidy form."""
    assert parse("  cron(0  18 ? * mon-fri *) ").expression == "cron(0 18 ? * MON-FRI *)"
    assert parse("rate(05 minutes)").expression == "rate(5 minutes)"
    assert parse("rate(1 day)").expression == "rate(1 day)"


# --- the end of time, time zones, windows -----------------------------------------


def test_cron_never_fires_after_2199() -> None:
    """Given the last minute AWS allows, it fires once and then next_after returns None."""
    schedule = parse("cron(59 23 31 12 ? 2199)")

    assert schedule.next_after(at(2199, 12, 31, 23, 58)) == at(2199, 12, 31, 23, 59)
    assert schedule.next_after(at(2199, 12, 31, 23, 59)) is None
    assert list(schedule.iter_after(at(2199, 1, 1))) == [at(2199, 12, 31, 23, 59)]
    assert parse("cron(* * * * ? *)").next_after(datetime.max.replace(tzinfo=UTC)) is None


def test_a_schedule_whose_years_have_passed_or_that_cannot_fire_returns_none() -> None:
    """Given past years, or February 30th, next_after returns None (after a short walk)."""
    assert parse("cron(0 0 1 1 ? 1970-1980)").next_after(at(2024, 1, 1)) is None
    assert parse("cron(0 0 30 2 ? *)").next_after(at(1970, 1, 1)) is None


def test_rate_past_the_last_representable_datetime_returns_none() -> None:
    """Given a time near datetime.max, a rate with no representable next fire returns None."""
    assert parse("rate(1 day)").next_after(at(9999, 12, 31, 12)) is None


def test_aware_times_in_other_zones_are_converted_and_results_are_utc() -> None:
    """Given 11:30 at UTC+2 (09:30 UTC), the next 10:00 UTC is the same day, in UTC."""
    plus_two = timezone(timedelta(hours=2))

    fire = parse("cron(0 10 * * ? *)").next_after(datetime(2024, 3, 15, 11, 30, tzinfo=plus_two))

    assert fire == at(2024, 3, 15, 10)
    assert fire is not None
    assert fire.tzinfo is UTC


@pytest.mark.parametrize("expression", ["cron(0 10 * * ? *)", "rate(5 minutes)"])
def test_naive_datetimes_are_refused(expression: str) -> None:
    """Given a naive datetime, every method raises ValueError instead of guessing a zone."""
    schedule = parse(expression)
    naive = datetime(2024, 3, 15, 9, 30)

    with pytest.raises(ValueError, match="naive"):
        schedule.next_after(naive)
    with pytest.raises(ValueError, match="naive"):
        schedule.iter_after(naive)
    with pytest.raises(ValueError, match="naive"):
        schedule.fire_times_between(naive, at(2024, 3, 16))
    with pytest.raises(ValueError, match="naive"):
        schedule.fire_times_between(at(2024, 3, 15), naive)


def test_fire_times_between_excludes_start_and_includes_end() -> None:
    """Given the window (10:00, 11:00], a quarter-hourly schedule fires at 10:15 .. 11:00."""
    schedule = parse("cron(0/15 * * * ? *)")

    fires = list(schedule.fire_times_between(at(2024, 3, 15, 10), at(2024, 3, 15, 11)))

    assert fires == [
        at(2024, 3, 15, 10, 15),
        at(2024, 3, 15, 10, 30),
        at(2024, 3, 15, 10, 45),
        at(2024, 3, 15, 11),
    ]
    assert list(schedule.fire_times_between(at(2024, 3, 15, 11), at(2024, 3, 15, 10))) == []


def test_rate_origin_can_be_moved() -> None:
    """Given an origin at 09:20, rate(1 hour) fires at 10:20, 11:20 rather than on the hour."""
    schedule = RateSchedule(1, "hours", origin=at(2024, 3, 15, 9, 20))

    assert list(islice(schedule.iter_after(at(2024, 3, 15, 9, 30)), 2)) == [
        at(2024, 3, 15, 10, 20),
        at(2024, 3, 15, 11, 20),
    ]
    assert schedule.expression == "rate(1 hour)"


def test_rate_schedule_refuses_a_zero_value_or_naive_origin() -> None:
    """Given a value of 0 or a naive origin, RateSchedule refuses to be built."""
    with pytest.raises(ValueError, match="positive"):
        RateSchedule(0, "minutes")
    with pytest.raises(ValueError, match="naive"):
        RateSchedule(5, "minutes", origin=datetime(2024, 1, 1))


def test_public_names_are_curated() -> None:
    """The module exports exactly the five documented names."""
    assert set(cron.__all__) == {
        "parse",
        "Schedule",
        "CronSchedule",
        "RateSchedule",
        "InvalidScheduleError",
    }


# --- refusals -------------------------------------------------------------------

INVALID = [
    # (expression, field, a fragment of the message)
    ("", None, "expected rate"),
    ("every 5 minutes", None, "expected rate"),
    ("cron(0 10 * * ? *", None, "expected rate"),
    ("CRON(0 10 * * ? *)", None, "expected rate"),
    ("cron(0 10 * * ?)", None, "6 fields"),
    ("cron(0 0 10 * * ? *)", None, "6 fields"),
    ("cron(0 10 ? * ? *)", "day-of-month", "both '?'"),
    ("cron(0 10 * * * *)", "day-of-month", "must be '?'"),
    ("cron(0 10 * * MON *)", "day-of-month", "must be '?'"),
    ("cron(0 10 1 * MON *)", "day-of-week", "must be '?'"),
    ("cron(0 10 1 * * *)", "day-of-week", "must be '?'"),
    ("cron(60 10 * * ? *)", "minutes", "'60' is out of range 0-59"),
    ("cron(0 24 * * ? *)", "hours", "'24' is out of range 0-23"),
    ("cron(0 L * * ? *)", "hours", "'L' is not a value"),
    ("cron(0 10 0 * ? *)", "day-of-month", "'0' is out of range 1-31"),
    ("cron(0 10 32 * ? *)", "day-of-month", "'32' is out of range"),
    ("cron(0 10 * 13 ? *)", "month", "'13' is out of range 1-12"),
    ("cron(0 10 * FOO ? *)", "month", "'FOO' is not a value (expected 1-12 or JAN-DEC)"),
    ("cron(0 10 ? * 0 *)", "day-of-week", "'0' is out of range 1-7"),  # Unix Sunday
    ("cron(0 10 ? * 8 *)", "day-of-week", "'8' is out of range"),
    ("cron(0 10 ? * SUNDAY *)", "day-of-week", "'SUNDAY' is not a value"),
    ("cron(0 10 * * ? 1969)", "year", "'1969' is out of range 1970-2199"),
    ("cron(0 10 * * ? 2200)", "year", "'2200' is out of range"),
    ("cron(0 10 * * ? 2199-1970)", "year", "cannot wrap"),
    ("cron(0 10 ? * 3#1,6#3 *)", "day-of-week", "'#' allows a single expression"),
    ("cron(0 10 ? * 2#6 *)", "day-of-week", "between 1 and 5"),
    ("cron(0 10 ? * 2#0 *)", "day-of-week", "between 1 and 5"),
    ("cron(0 10 ? * */2 *)", "day-of-week", "'/' is not allowed"),
    ("cron(0 10 ? * 2,L *)", "day-of-week", "L must be the whole field"),
    ("cron(0 10 ? * 6W *)", "day-of-week", "'6W' is not a value"),
    ("cron(0 10 ? * 8L *)", "day-of-week", "'8' is out of range"),
    ("cron(0 10 L,15 * ? *)", "day-of-month", "L and W must be the whole field"),
    ("cron(0 10 W * ? *)", "day-of-month", "L and W must be the whole field"),
    ("cron(0 10 L-31 * ? *)", "day-of-month", "at most 30"),
    ("cron(0 10 32W * ? *)", "day-of-month", "'32' is out of range"),
    ("cron(0 10 * * L *)", "day-of-month", "must be '?'"),
    ("cron(*/0 10 * * ? *)", "minutes", "step after '/' must be a number from 1 to 60"),
    ("cron(0/61 10 * * ? *)", "minutes", "from 1 to 60"),
    ("cron(0/x 10 * * ? *)", "minutes", "step after '/'"),
    ("cron(1-2-3 10 * * ? *)", "minutes", "'2-3' is not a value"),
    ("cron(0,,5 10 * * ? *)", "minutes", "'' is not a value"),
    ("cron(5- 10 * * ? *)", "minutes", "'' is not a value"),
    ("cron(? 10 * * ? *)", "minutes", "'?' is not a value"),
    ("rate(0 minutes)", "value", "'0' is not a positive whole number"),
    ("rate(-5 minutes)", "value", "'-5' is not a positive whole number"),
    ("rate(1.5 hours)", "value", "'1.5' is not a positive whole number"),
    ("rate(99999999999 days)", "value", "too large"),
    ("rate(1 minutes)", "unit", "'minutes' must be 'minute' with the value 1"),
    ("rate(5 minute)", "unit", "'minute' must be 'minutes' with the value 5"),
    ("rate(5 weeks)", "unit", "'weeks' is not one of"),
    ("rate(5 Minutes)", "unit", "'Minutes' is not one of"),
    ("rate(5)", None, "expected rate(value unit)"),
    ("rate(5 minutes now)", None, "expected rate(value unit)"),
]


@pytest.mark.parametrize(("expression", "field", "fragment"), INVALID)
def test_invalid_expressions_are_refused_naming_the_field(
    expression: str, field: str | None, fragment: str
) -> None:
    """Given an expression AWS refuses, parse raises InvalidScheduleError naming the field."""
    with pytest.raises(InvalidScheduleError) as caught:
        parse(expression)

    error = caught.value
    assert error.field == field
    assert error.expression == expression
    assert fragment in str(error)
    if field is not None:
        assert field in str(error)


def test_invalid_schedule_error_is_a_configuration_error() -> None:
    """InvalidScheduleError sits under ConfigurationError, under DispatchError."""
    with pytest.raises(ConfigurationError) as caught:
        parse("cron(0 10 * * ? 2300)")

    assert isinstance(caught.value, DispatchError)
    assert isinstance(caught.value, InvalidScheduleError)


# --- the reference: a brute-force scan, written independently of dispatch.tasks.cron ----

DAY_NAMES = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
MONTH_NAMES = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
DayMatcher = Callable[[date], bool]
Field = tuple[str, frozenset[int]]


def aws_day_of_week(day: date) -> int:
    """1 = Sunday ... 7 = Saturday."""
    return day.isoweekday() % 7 + 1


def month_length(day: date) -> int:
    """The number of days in day's month, by stepping to the first of the next month."""
    first_of_next = date(day.year + day.month // 12, day.month % 12 + 1, 1)
    return (first_of_next - ONE_DAY).day


def weekday_nearest(year: int, month: int, base: int) -> int:
    """The Monday-to-Friday day of this month closest to base (there is never a tie)."""
    last = calendar.monthrange(year, month)[1]
    weekdays = [d for d in range(1, last + 1) if date(year, month, d).isoweekday() <= 5]
    return min(weekdays, key=lambda d: abs(d - base))


def stepped(low: int, high: int, first: int, last: int, step: int) -> frozenset[int]:
    """first, first+step, ... up to last, counting round the field's circle if last < first."""
    size = high - low + 1
    distance = (last - first) % size
    return frozenset(low + (first - low + i) % size for i in range(0, distance + 1, step))


@dataclass(frozen=True)
class Reference:
    """A generated cron expression with the sets and day rule it was generated from."""

    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    day_matches: DayMatcher
    months: frozenset[int]
    years: frozenset[int]

    def date_matches(self, day: date) -> bool:
        return day.year in self.years and day.month in self.months and self.day_matches(day)

    def next_after(self, t: datetime, horizon: datetime) -> datetime | None:
        """Walk forward one minute at a time from t until every field matches.

        A day whose date fails is passed over in one step: all of its 1440
        minutes fail the same date test, so the answer is that of the
        minute-by-minute scan, only sooner.
        """
        current = t.astimezone(UTC).replace(second=0, microsecond=0) + ONE_MINUTE
        while current <= horizon:
            if not self.date_matches(current.date()):
                current = datetime.combine(current.date() + ONE_DAY, time(), tzinfo=UTC)
            elif current.hour in self.hours and current.minute in self.minutes:
                return current
            else:
                current += ONE_MINUTE
        return None


def value_text(value: int, low: int, names: tuple[str, ...], draw: st.DrawFn) -> str:
    """A value as a number, or (where the field has names) a name in random case."""
    as_name: bool = draw(st.booleans())
    if names and as_name:
        name = names[value - low]
        return draw(st.sampled_from([name, name.lower(), name.capitalize()]))
    return str(value)


@st.composite
def list_field(
    draw: st.DrawFn,
    low: int,
    high: int,
    names: tuple[str, ...] = (),
    *,
    steps: bool = True,
) -> Field:
    """A comma-separated list of *, n, a-b, */k, n/k, a-b/k with the values it stands for."""
    values = st.integers(low, high)
    texts: list[str] = []
    union: set[int] = set()
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(
            st.sampled_from(
                ["*", "n", "a-b", "*/k", "n/k", "a-b/k"] if steps else ["*", "n", "a-b"]
            )
        )
        step = draw(st.integers(1, high - low + 1)) if kind.endswith("/k") else 1
        first, last = draw(values), draw(values)
        if kind.startswith("*"):
            first, last = low, high
            text = "*"
        elif kind.startswith("n"):
            last = high if kind == "n/k" else first
            text = value_text(first, low, names, draw)
        else:
            text = f"{value_text(first, low, names, draw)}-{value_text(last, low, names, draw)}"
        texts.append(f"{text}/{step}" if kind.endswith("/k") else text)
        union |= stepped(low, high, first, last, step)
    return ",".join(texts), frozenset(union)


@st.composite
def year_field(draw: st.DrawFn, around: int) -> Field:
    """Mostly *, otherwise years near the start so that the schedule still fires."""
    near = st.integers(max(1970, around - 1), min(2199, around + 3))
    kind = draw(st.sampled_from(["*", "*", "*", "n", "a-b", "n/k", "n,m"]))
    if kind == "*":
        return "*", frozenset(range(1970, 2200))
    first = draw(near)
    if kind == "n":
        return str(first), frozenset({first})
    if kind == "a-b":
        last = draw(st.integers(first, min(2199, first + 3)))
        return f"{first}-{last}", frozenset(range(first, last + 1))
    if kind == "n/k":
        step = draw(st.integers(1, 3))
        return f"{first}/{step}", frozenset(range(first, 2200, step))
    second = draw(near)
    return f"{first},{second}", frozenset({first, second})


@st.composite
def day_of_month_field(draw: st.DrawFn) -> tuple[str, DayMatcher]:
    """A day-of-month field with its own matching rule."""
    kind = draw(st.sampled_from(["list", "list", "L", "L-n", "LW", "L-nW", "nW"]))
    n = draw(st.integers(0, 30))
    if kind == "list":
        text, days = draw(list_field(1, 31))
        return text, lambda d: d.day in days
    if kind == "L":
        return "L", lambda d: d.day == month_length(d)
    if kind == "L-n":
        return f"L-{n}", lambda d: d.day == month_length(d) - n
    if kind == "LW":
        return "LW", lambda d: d.day == weekday_nearest(d.year, d.month, month_length(d))
    if kind == "L-nW":
        return (
            f"L-{n}W",
            lambda d: (
                month_length(d) - n >= 1
                and d.day == weekday_nearest(d.year, d.month, month_length(d) - n)
            ),
        )
    base = n + 1
    return (
        f"{base}W",
        lambda d: base <= month_length(d) and d.day == weekday_nearest(d.year, d.month, base),
    )


@st.composite
def day_of_week_field(draw: st.DrawFn) -> tuple[str, DayMatcher]:
    """A day-of-week field (AWS numbering, 1 = Sunday) with its own matching rule."""
    kind = draw(st.sampled_from(["list", "list", "L", "nL", "n#k"]))
    weekday = draw(st.integers(1, 7))
    weekday_text = value_text(weekday, 1, DAY_NAMES, draw)
    if kind == "list":
        text, weekdays = draw(list_field(1, 7, DAY_NAMES, steps=False))
        return text, lambda d: aws_day_of_week(d) in weekdays
    if kind == "L":
        return "L", lambda d: aws_day_of_week(d) == 7
    if kind == "nL":
        return (
            f"{weekday_text}L",
            lambda d: aws_day_of_week(d) == weekday and d.day + 7 > month_length(d),
        )
    nth = draw(st.integers(1, 5))
    return (
        f"{weekday_text}#{nth}",
        lambda d: aws_day_of_week(d) == weekday and (d.day - 1) // 7 + 1 == nth,
    )


ZONES = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
STARTS = st.datetimes(
    min_value=datetime(1971, 1, 1),
    max_value=datetime(2196, 12, 31),
    timezones=st.sampled_from(ZONES),
)


@st.composite
def cron_cases(draw: st.DrawFn) -> tuple[Reference, datetime]:
    """A valid cron expression, its reference, and a start time (in some zone)."""
    start = draw(STARTS)
    minutes_text, minutes = draw(list_field(0, 59))
    hours_text, hours = draw(list_field(0, 23))
    months_text, months = draw(list_field(1, 12, MONTH_NAMES))
    years_text, years = draw(year_field(start.astimezone(UTC).year))
    if draw(st.booleans()):
        day_of_month, day_matches = draw(day_of_month_field())
        day_of_week = "?"
    else:
        day_of_week, day_matches = draw(day_of_week_field())
        day_of_month = "?"
    fields = [minutes_text, hours_text, day_of_month, months_text, day_of_week, years_text]
    expression = f"cron({' '.join(fields)})"
    reference = Reference(expression, minutes, hours, day_matches, months, years)
    return reference, start


@settings(max_examples=400, deadline=None)
@given(case=cron_cases())
def test_cron_next_fire_times_match_a_brute_force_scan(case: tuple[Reference, datetime]) -> None:
    """Given any valid cron expression and start, the next 4 fire times equal the reference's."""
    reference, start = case
    horizon = min(
        at(max(reference.years), 12, 31, 23, 59), start.astimezone(UTC) + 6 * 366 * ONE_DAY
    )
    fires = parse(reference.expression).iter_after(start)

    after = start
    for _ in range(4):
        expected = reference.next_after(after, horizon)
        got = next(fires, None)
        if expected is None:  # nothing within the horizon: the module agrees
            assert got is None or got > horizon, reference.expression
            return
        assert got == expected, reference.expression
        after = expected


@settings(max_examples=200, deadline=None)
@given(
    value=st.integers(1, 5000),
    unit=st.sampled_from(["minutes", "hours", "days"]),
    start=STARTS,
)
def test_rate_fires_on_the_epoch_grid(value: int, unit: str, start: datetime) -> None:
    """Given any rate and start, fire times are epoch + k*period, the first the next one after t."""
    expression = f"rate({value} {unit[:-1] if value == 1 else unit})"
    period = timedelta(**{unit: value})
    epoch = at(1970, 1, 1)

    fires = list(islice(parse(expression).iter_after(start), 4))

    assert fires[0] - period <= start < fires[0]
    for fire in fires:
        assert (fire - epoch) % period == timedelta(0)
        assert fire.tzinfo is UTC
    assert all(later - earlier == period for earlier, later in pairwise(fires))
