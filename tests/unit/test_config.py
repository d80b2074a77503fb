"""Settings from the environment: every variable read from a plain dict, never os.environ."""

from __future__ import annotations

import dataclasses

import pytest

from dispatch.core import constants as c
from dispatch.core.config import Settings, parse_task_modules
from dispatch.core.errors import ConfigurationError

QUEUE = "https://sqs.eu-west-1.amazonaws.com/123456789012/dispatch-tasks"
DLQ = "https://sqs.eu-west-1.amazonaws.com/123456789012/dispatch-dlq"
TABLE = "dispatch-state"


def environ(**overrides: str | None) -> dict[str, str]:
    """A complete environment, with some variables replaced (None removes one)."""
    env = {c.ENV_QUEUE_URL: QUEUE, c.ENV_DLQ_URL: DLQ, c.ENV_TABLE: TABLE}
    env.update({key: value for key, value in overrides.items() if value is not None})
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
    return env


def test_from_env_reads_the_three_required_variables() -> None:
    """Given the queue, DLQ and table variables only, when settings are read, then they are
    taken as given, with the default region, no endpoint and no task modules."""
    settings = Settings.from_env(environ())

    assert settings == Settings(queue_url=QUEUE, dlq_url=DLQ, table=TABLE)
    assert settings.region == c.DEFAULT_REGION == "us-east-1"
    assert settings.endpoint_url is None
    assert settings.task_modules == ()


def test_missing_variables_are_all_named() -> None:
    """Given an empty environment, when settings are read, then one ConfigurationError
    names all three missing variables (plural) and points at ``dispatch init``."""
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({})

    message = str(caught.value)
    assert "missing environment variables" in message
    for name in (c.ENV_QUEUE_URL, c.ENV_DLQ_URL, c.ENV_TABLE):
        assert name in message
    assert "dispatch init" in message
    assert caught.value.setting == c.ENV_QUEUE_URL


def test_an_empty_variable_counts_as_missing() -> None:
    """Given DISPATCH_TABLE set to an empty string, when settings are read, then it alone
    is named as missing (singular)."""
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env(environ(**{c.ENV_TABLE: ""}))

    message = str(caught.value)
    assert f"missing environment variable: {c.ENV_TABLE} " in message
    assert c.ENV_QUEUE_URL not in message
    assert caught.value.setting == c.ENV_TABLE


def test_two_missing_variables_are_both_named() -> None:
    """Given the queue and the table unset, when read, then both are named, DLQ is not."""
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env(environ(**{c.ENV_QUEUE_URL: None, c.ENV_TABLE: None}))

    message = str(caught.value)
    assert f"{c.ENV_QUEUE_URL}, {c.ENV_TABLE}" in message
    assert c.ENV_DLQ_URL not in message


@pytest.mark.parametrize("variable", [c.ENV_QUEUE_URL, c.ENV_DLQ_URL])
@pytest.mark.parametrize(
    "url", ["dispatch-tasks", "sqs.eu-west-1.amazonaws.com/1/q", "ftp://x/q", " https://x/q"]
)
def test_a_value_that_is_not_a_url_is_refused_naming_the_variable(variable: str, url: str) -> None:
    """Given a queue variable that does not start with http(s)://, when read, then
    ConfigurationError names that variable and quotes the value."""
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env(environ(**{variable: url}))

    assert f"{variable}={url!r}" in str(caught.value)
    assert caught.value.setting == variable


def test_http_urls_are_accepted_for_a_local_endpoint() -> None:
    """Given http:// queue URLs (the local emulator), when read, then they are accepted."""
    settings = Settings.from_env(
        environ(**{c.ENV_QUEUE_URL: "http://localhost:4566/q", c.ENV_DLQ_URL: "http://l/dlq"})
    )

    assert settings.queue_url == "http://localhost:4566/q"


def test_the_same_queue_as_dlq_is_refused() -> None:
    """Given the DLQ URL equal to the queue URL, when read, then ConfigurationError names
    the DLQ setting."""
    with pytest.raises(ConfigurationError, match="different queue") as caught:
        Settings.from_env(environ(**{c.ENV_DLQ_URL: QUEUE}))

    assert caught.value.setting == c.ENV_DLQ_URL


@pytest.mark.parametrize("table", ["ab", "t" * 256])
def test_a_table_name_of_the_wrong_length_is_refused(table: str) -> None:
    """Given a table name shorter than 3 or longer than 255 characters, when read, then
    ConfigurationError names DISPATCH_TABLE."""
    with pytest.raises(ConfigurationError, match="not a DynamoDB table name") as caught:
        Settings.from_env(environ(**{c.ENV_TABLE: table}))

    assert caught.value.setting == c.ENV_TABLE


@pytest.mark.parametrize("table", ["abc", "t" * 255])
def test_table_names_at_the_length_limits_are_accepted(table: str) -> None:
    """Given a table name of 3 or 255 characters, when read, then it is accepted."""
    assert Settings.from_env(environ(**{c.ENV_TABLE: table})).table == table


@pytest.mark.parametrize(
    ("region", "default_region", "expected"),
    [
        ("eu-west-1", "us-west-2", "eu-west-1"),
        (None, "us-west-2", "us-west-2"),
        ("", "us-west-2", "us-west-2"),
        (None, None, "us-east-1"),
        ("", "", "us-east-1"),
    ],
)
def test_region_falls_back_from_aws_region_to_aws_default_region_to_us_east_1(
    region: str | None, default_region: str | None, expected: str
) -> None:
    """Given AWS_REGION and/or AWS_DEFAULT_REGION set or not, when read, then AWS_REGION
    wins, then AWS_DEFAULT_REGION, then us-east-1."""
    env = environ(**{c.ENV_REGION: region, c.ENV_DEFAULT_REGION: default_region})

    assert Settings.from_env(env).region == expected


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [("http://localhost:4566", "http://localhost:4566"), ("", None), (None, None)],
)
def test_endpoint_url_is_read_and_empty_means_none(
    endpoint: str | None, expected: str | None
) -> None:
    """Given AWS_ENDPOINT_URL set, empty or unset, when read, then the endpoint is the
    value, or None for empty/unset."""
    assert Settings.from_env(environ(**{c.ENV_ENDPOINT_URL: endpoint})).endpoint_url == expected


@pytest.mark.parametrize(
    ("value", "modules"),
    [
        ("", ()),
        ("app.tasks", ("app.tasks",)),
        ("app.tasks, billing.tasks", ("app.tasks", "billing.tasks")),
        (" app.tasks ,, ,billing.tasks, ", ("app.tasks", "billing.tasks")),
        (",", ()),
    ],
)
def test_dispatch_tasks_is_split_on_commas(value: str, modules: tuple[str, ...]) -> None:
    """Given DISPATCH_TASKS with spaces and empty parts, when read, then the module names
    come out stripped, in order, without empties."""
    assert Settings.from_env(environ(**{c.ENV_TASKS: value})).task_modules == modules
    assert parse_task_modules(value) == modules


@pytest.mark.parametrize(
    ("queue_url", "fifo"),
    [(QUEUE, False), (QUEUE + ".fifo", True), (QUEUE + ".fifo/", False)],
)
def test_is_fifo_follows_the_queue_name(queue_url: str, fifo: bool) -> None:
    """Given a queue URL, when asked, then FIFO exactly when the name ends in .fifo."""
    assert Settings(queue_url=queue_url, dlq_url=DLQ, table=TABLE).is_fifo is fifo


def test_with_overrides_validates_the_copy_and_leaves_the_original() -> None:
    """Given settings, when overridden with a good and then a bad value, then the good
    copy differs only there, the bad one is refused, and the original is unchanged."""
    settings = Settings.from_env(environ())

    copy = settings.with_overrides(region="ap-south-1")
    assert copy.region == "ap-south-1"
    assert dataclasses.replace(copy, region=settings.region) == settings

    with pytest.raises(ConfigurationError, match=c.ENV_DLQ_URL):
        settings.with_overrides(dlq_url=QUEUE)
    assert settings.dlq_url == DLQ


def test_settings_are_frozen() -> None:
    """Given settings, when a field is assigned, then FrozenInstanceError."""
    settings = Settings.from_env(environ())

    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.table = "other"  # type: ignore[misc]


def test_signing_keys_come_from_the_environment_and_never_show_in_repr() -> None:
    """Given DISPATCH_SIGNING_KEY with two keys (a rotation), when settings are read, then
    both keys are there in order, and printing the settings does not reveal them."""
    env = {
        "DISPATCH_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/1/q",
        "DISPATCH_DLQ_URL": "https://sqs.us-east-1.amazonaws.com/1/d",
        "DISPATCH_TABLE": "state",
        "DISPATCH_SIGNING_KEY": " new-key , old-key ",
    }

    settings = Settings.from_env(env)

    assert settings.signing_keys == ("new-key", "old-key")
    assert "new-key" not in repr(settings) and "old-key" not in repr(settings)
