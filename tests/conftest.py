"""Fixtures shared by every test: the embedded local AWS and a fresh environment on it.

``local_aws`` starts one emulator process for the whole run. ``aws_env`` gives
each test an emptied emulator, its own queue, dead-letter queue and table
(provisioned from deploy/template.yaml under a unique prefix), the environment a
user would set, and the Settings read from it.

Set ``DISPATCH_LOCAL_AWS_STOCK_MOTO=1`` to run the emulator without
dispatch.local.moto_patches (to see which tests moto's own races break).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import structlog

from dispatch.core.config import Settings
from dispatch.local.emulator import LocalAWS
from dispatch.local.provision import provision

STOCK_MOTO_ENV = "DISPATCH_LOCAL_AWS_STOCK_MOTO"


@pytest.fixture(autouse=True)
def _logging_config_kept() -> Iterator[None]:
    """A test that configures logging (the CLI run in-process does) leaves the next
    test the configuration it found: a test capturing info logs must not depend on
    which tests ran before it in the same process."""
    before = structlog.get_config()
    yield
    structlog.configure(**before)


@pytest.fixture(scope="session")
def local_aws() -> Iterator[LocalAWS]:
    """One embedded local AWS for the whole test run, stopped at the end."""
    with LocalAWS.start(patch_moto=os.environ.get(STOCK_MOTO_ENV) != "1") as aws:
        yield aws


@pytest.fixture(scope="session")
def _provisioning_clients(local_aws: LocalAWS) -> tuple[Any, Any]:
    """boto3 SQS and DynamoDB clients on the emulator (made once: clients are slow to build)."""
    options: dict[str, Any] = {
        "endpoint_url": local_aws.endpoint_url,
        "region_name": local_aws.region,
        "aws_access_key_id": local_aws.env()["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": local_aws.env()["AWS_SECRET_ACCESS_KEY"],
    }
    return boto3.client("sqs", **options), boto3.client("dynamodb", **options)


@pytest.fixture
def aws_env(
    local_aws: LocalAWS,
    _provisioning_clients: tuple[Any, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> Settings:
    """Fresh queue, DLQ and table on an emptied emulator; the environment points at them."""
    local_aws.reset()
    for name, value in local_aws.env().items():
        monkeypatch.setenv(name, value)
    sqs, dynamodb = _provisioning_clients
    resources = provision(sqs, dynamodb, prefix=f"test-{uuid.uuid4().hex[:12]}")
    for name, value in resources.as_env().items():
        monkeypatch.setenv(name, value)
    return Settings.from_env()
