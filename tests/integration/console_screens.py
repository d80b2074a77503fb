"""Screenshots of every console page for docs/operations.md (``make screens``).

Boots the embedded local AWS, runs the console tests' workload (tasks that succeed,
die, retry later, wait for a 2/s resource) with a live dispatcher, pauses one task,
serves the console with actions allowed and saves each page, as headless Chromium
draws it, to ``docs/console-<page>.png``. Not part of ``make test``; run it with
``python -m tests.integration.console_screens [--out DIR]``.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from dispatch.core.config import Endpoint, Settings
from dispatch.local.emulator import LocalAWS, environment
from dispatch.local.provision import provision
from dispatch.loop import publish
from dispatch.ops.pausing import pause
from dispatch.ops.top import read_frame
from dispatch.producer.enqueue import Queue
from dispatch.store.aws import sync_client, sync_clients
from dispatch.store.state import Status, SyncStateStore
from dispatch.tasks.registry import Registry
from tests.integration.conftest import REPO, wait_until
from tests.integration.console_world import (
    Workload,
    declare_tasks,
    enqueue_workload,
    running,
    serving,
)
from tests.integration.test_console_browser import CHROMIUM, CHROMIUM_ARGS

PAGES = (
    ("overview", ""),
    ("tasks", "tasks?status=dead"),
    ("task", None),  # a dead task's page
    ("dead-letters", "dead-letters"),
    ("resources", "resources"),
)


def _busy(settings: Settings, sent: Workload) -> bool:
    """The refunds are dead, the CRM syncs retrying, and a report shows the resource."""
    clients = sync_clients(settings)
    store = SyncStateStore(clients.dynamodb, settings.table)
    dead = all((r := store.get(i)) is not None and r.status is Status.DEAD for i in sent.dead)
    frame = read_frame(clients, settings)
    return dead and any(r.name == "warehouse-api" and r.waiting for r in frame.resources)


async def _shoot(url: str, sent: Workload, out: Path) -> list[Path]:
    from playwright.async_api import async_playwright

    saved: list[Path] = []
    async with async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page: Any = await browser.new_page(viewport={"width": 1360, "height": 860})
        for name, path in PAGES:
            await page.goto(f"{url}{path if path is not None else f'tasks/{sent.dead[0]}'}")
            if name == "overview":  # let the live chart gather a few points
                await page.locator("#live polyline").first.wait_for(
                    state="attached", timeout=60_000
                )
                await page.wait_for_timeout(16_000)
                await page.reload()  # the tables now show the achieved rate too
                await page.locator("#live polyline").first.wait_for(state="attached")
            target = out / f"console-{name}.png"
            await page.screenshot(path=str(target), full_page=True)
            saved.append(target)
        await browser.close()
    return saved


async def _run(settings: Settings, out: Path) -> list[Path]:
    registry = Registry()
    tasks = declare_tasks(registry)
    queue = Queue(settings)
    sent = enqueue_workload(queue, tasks, throttled=80)
    async with running(settings, registry), serving(queue, registry, allow_actions=True) as url:
        await asyncio.to_thread(wait_until, lambda: _busy(settings, sent), what="a busy queue")
        pause(sync_clients(settings).dynamodb, settings, "task", "sync_crm", by="alice@laptop")
        saved = await _shoot(url, sent, out)
    queue.close()
    return saved


def main() -> None:
    """Take the screenshots into ``--out`` (default: docs/)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    out = parser.parse_args().out
    publish.PUBLISH_EVERY_S = 1.0  # live figures every second, for a chart with a shape
    with LocalAWS.start() as aws, environment(aws.env()):
        endpoint = Endpoint(region=aws.region, endpoint_url=aws.endpoint_url)
        sqs, dynamodb = sync_client("sqs", endpoint), sync_client("dynamodb", endpoint)
        resources = provision(sqs, dynamodb, prefix="shop")
        with environment(resources.as_env()):
            for path in asyncio.run(_run(Settings.from_env(), out)):
                print(path)


if __name__ == "__main__":
    main()
