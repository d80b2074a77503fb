"""The embedded local AWS's stand-in for the network: ``--round-trip-ms SERVICE=MS``.

Each request to a named service is held that long before moto sees it, in its own
thread; other services, and requests that are not signed, are not held.
"""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest

from dispatch.local.emulator import LocalAWS
from dispatch.local.server import parse_round_trips, request_service

HELD_MS = 400


def client(aws: LocalAWS, service: str) -> Any:
    env = aws.env()
    return boto3.client(
        service,
        endpoint_url=aws.endpoint_url,
        region_name=aws.region,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


def seconds(call: Any) -> float:
    started = time.monotonic()
    call()
    return time.monotonic() - started


def test_requests_to_a_named_service_are_held_in_parallel_and_others_are_not() -> None:
    """Given an emulator holding SQS requests 400 ms, when SQS and DynamoDB are called,
    then every SQS request takes at least 400 ms, five at once take well under five
    times that (held side by side), and a DynamoDB request is not held."""
    with LocalAWS.start(round_trip_ms={"sqs": HELD_MS}) as aws:
        sqs, dynamodb = client(aws, "sqs"), client(aws, "dynamodb")
        sqs.list_queues()  # connections and credentials warmed up outside the measurements
        dynamodb.list_tables()

        one = seconds(sqs.list_queues)
        with ThreadPoolExecutor(5) as pool:
            five = seconds(lambda: list(pool.map(lambda _: sqs.list_queues(), range(5))))
        unheld = seconds(dynamodb.list_tables)

    held_s = HELD_MS / 1000
    assert one >= held_s
    assert held_s <= five < 5 * held_s
    assert unheld < held_s


def test_a_bad_round_trip_option_stops_the_server_with_its_value_named() -> None:
    """Given --round-trip-ms without a number, when the server starts, then it exits with
    status 2 and names the option and the value it could not read."""
    finished = subprocess.run(
        [sys.executable, "-m", "dispatch.local.server", "--round-trip-ms", "sqs=fast"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert finished.returncode == 2
    assert "--round-trip-ms 'sqs=fast'" in finished.stderr
    assert "SERVICE=MS" in finished.stderr


def test_round_trip_specs_are_read_per_service_in_seconds() -> None:
    """Given SERVICE=MS specs, when parsed, then each service maps to seconds
    (lower-cased), and a spec that is not SERVICE=MS with MS in 0..10,000 is refused."""
    assert parse_round_trips(["SQS=20", "dynamodb=5", "lambda=0"]) == {
        "sqs": 0.02,
        "dynamodb": 0.005,
        "lambda": 0.0,
    }
    for bad in ["sqs", "=5", "sqs=", "sqs=-1", "sqs=10001", "sqs=abc"]:
        with pytest.raises(ValueError, match="expected SERVICE=MS"):
            parse_round_trips([bad])


def test_the_service_comes_from_the_sigv4_credential_scope() -> None:
    """Given a SigV4 Authorization header, when read, then the service of its credential
    scope is the request's; without one there is none."""
    header = (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261130/us-east-1/dynamodb/aws4_request, "
        "SignedHeaders=host;x-amz-date, Signature=abc"
    )
    assert request_service({"HTTP_AUTHORIZATION": header}) == "dynamodb"
    assert request_service({}) is None
    assert request_service({"HTTP_AUTHORIZATION": "Bearer x"}) is None
