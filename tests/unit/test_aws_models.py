"""AWS's service models are parsed once per process, whichever session makes a client."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.loaders import JSONFileLoader

from dispatch.core.config import Endpoint
from dispatch.store.aws import async_client, sync_client

ENDPOINT = Endpoint(region="us-east-1", endpoint_url="http://127.0.0.1:9")


@pytest.fixture
def files_read(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The model files botocore reads from disk from now on."""
    read: list[str] = []
    original = JSONFileLoader.load_file

    def load_file(self: Any, file_path: str) -> Any:
        read.append(file_path)
        return original(self, file_path)

    monkeypatch.setattr(JSONFileLoader, "load_file", load_file)
    return read


async def test_a_second_client_reads_no_model_file_again(files_read: list[str]) -> None:
    """Given one DynamoDB and one SQS client made (sync and async), when the same clients
    are made again from new sessions (as every scheduled dispatcher tick does), then
    no model file is read again."""
    sync_client("dynamodb", ENDPOINT).close()
    async with async_client("sqs", ENDPOINT), async_client("dynamodb", ENDPOINT):
        pass
    files_read.clear()  # whatever the first ones read (nothing, if an earlier test made clients)

    sync_client("dynamodb", ENDPOINT).close()
    async with async_client("sqs", ENDPOINT), async_client("dynamodb", ENDPOINT):
        pass

    assert files_read == []
