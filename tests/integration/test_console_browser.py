"""`dispatch ui` in a real browser (headless Chromium, Playwright) against the embedded local AWS.

A real dispatcher runs the workload of :mod:`tests.integration.console_world` (tasks
that succeed, die, retry later, wait for a 2/s resource, wait to be run); the tests
read each page as a person would (text on the page, the live chart drawn) and click
the actions, checking in the table and the queues that each one landed.

Chromium is Debian's (``/usr/bin/chromium``, installed by ``make test``); it is never
downloaded. When it is missing these tests fail saying so: they are never skipped.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dispatch.core.config import Settings
from dispatch.loop import publish
from dispatch.ops.pausing import list_pauses
from dispatch.ops.top import read_frame
from dispatch.producer.enqueue import Queue
from dispatch.store.aws import SyncClients
from dispatch.store.state import Status, SyncStateStore
from dispatch.tasks.registry import Registry
from tests.integration.conftest import queue_counts, receive_all, wait_until
from tests.integration.console_world import (
    declare_tasks,
    enqueue_workload,
    run_until_settled,
    running,
    serving,
)

# Timing-sensitive (start windows against a bucket's bound) or CPU-heavy (a browser):
# `make test` (--dist loadgroup) runs these modules on one worker, never side by side.
pytestmark = pytest.mark.xdist_group("timing")

CHROMIUM = Path(os.environ.get("DISPATCH_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
EXPECT_MS = 30_000  # the bound on Playwright's auto-waiting checks; never near it


@pytest.fixture
def chromium() -> Path:
    """Debian's chromium; a clear failure (never a skip) when it is missing."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the console's browser tests need Debian's chromium "
            "(`make test` installs it as root; or `apt-get install chromium`)"
        )
    return CHROMIUM


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Any]:
    """Headless Chromium driven by Playwright; a clear failure (never a skip) without it."""
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[dev]'")
    async with async_playwright() as driver:
        launched = await driver.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
def fast_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dispatchers publish their reports every 0.5 s here (5 s by default)."""
    monkeypatch.setattr(publish, "PUBLISH_EVERY_S", 0.5)


def record_status(clients: SyncClients, settings: Settings, task_id: str) -> Status | None:
    record = SyncStateStore(clients.dynamodb, settings.table).get(task_id)
    return None if record is None else record.status


async def test_every_page_shows_the_live_queue_as_a_person_would_read_it(
    *,
    aws_env: Settings,
    queue: Queue,
    registry: Registry,
    clients: SyncClients,
    browser: Any,
    fast_reports: None,
) -> None:
    """Given a live dispatcher that has run charges (succeeded), refunds (dead), CRM
    syncs (retrying in 10 minutes) and is working through reservations throttled to 2/s,
    when each page is opened in Chromium, then the overview shows the queue, one live
    dispatcher, the throttled resource and draws its live chart; the tasks page lists the
    dead and, filtered, the retrying tasks; a dead task's page shows its failure, trace
    and dead letter; the dead letters page groups them by reason; the resources page
    shows the limits; and a read-only console offers no action."""
    from playwright.async_api import expect

    tasks = declare_tasks(registry)
    sent = enqueue_workload(queue, tasks, throttled=16)
    store = SyncStateStore(clients.dynamodb, aws_env.table)

    def busy() -> bool:
        frame = read_frame(clients, aws_env)
        dead = [store.get(i) for i in sent.dead]
        return (
            frame.dispatchers == 1
            and any(r.name == "warehouse-api" for r in frame.resources)
            and all(r is not None and r.status is Status.DEAD for r in dead)
        )

    async with running(aws_env, registry), serving(queue, registry) as url:
        await asyncio.to_thread(wait_until, busy, what="a live report with the resource")
        page = await browser.new_page(viewport={"width": 1360, "height": 900})
        await page.goto(url)
        await expect(page.get_by_role("heading", name="Overview")).to_be_visible()
        await expect(page.locator("header .mode")).to_have_text("read-only")
        await expect(page.locator(".card", has_text="Dispatchers").locator(".big")).to_have_text(
            "1"
        )
        await expect(page.get_by_text("Nothing is paused.")).to_be_visible()
        resource_row = page.locator("table tr", has_text="warehouse-api").first
        await expect(resource_row).to_contain_text("2/s")
        await expect(page.locator("#live svg polyline").first).to_be_attached(timeout=EXPECT_MS)
        await expect(page.locator("#live .legend").first).to_contain_text("achieved")
        assert await page.locator("form[action^='/actions/']").count() == 0

        await page.get_by_role("link", name="Tasks", exact=True).click()
        listing = page.locator("#task-list")
        for task_id in sent.dead:
            await expect(listing).to_contain_text(task_id)
        await expect(listing).to_contain_text("permanent_error")
        await page.select_option("select[name=status]", "retrying")
        await page.get_by_role("button", name="List").click()
        for task_id in sent.retrying:
            await expect(listing).to_contain_text(task_id)
        await expect(listing).not_to_contain_text(sent.dead[0])

        await page.goto(f"{url}tasks?status=dead")
        await page.get_by_role("link", name=sent.dead[0]).click()
        await expect(page.get_by_role("heading", name="Last failure")).to_be_visible()
        await expect(page.locator(".problem")).to_contain_text("card processor refused order")
        await expect(page.locator("pre.trace")).to_contain_text("PermanentError")
        await expect(page.get_by_role("heading", name="Dead letter")).to_be_visible()
        await expect(page.locator("table.record").first).to_contain_text("permanent_error")

        await page.get_by_role("link", name="Dead letters").click()
        group = page.locator("section.group", has_text="permanent_error")
        await expect(group.locator(".count")).to_have_text("3")
        await expect(group).to_contain_text("refund \u00d7 3")
        await expect(page.get_by_role("button", name=re.compile("Redrive"))).to_have_count(0)

        await page.get_by_role("link", name="Resources").click()
        await expect(page.locator("table tr", has_text="warehouse-api").first).to_contain_text(
            "/ 2"
        )
        await page.goto(f"{url}tasks/{sent.succeeded[0]}")
        await expect(page.locator(".status").first).to_have_text("succeeded")
        await expect(page.get_by_role("heading", name="Result")).to_be_visible()
        await page.close()


async def test_pause_resume_redrive_cancel_and_purge_from_the_pages(
    aws_env: Settings,
    queue: Queue,
    registry: Registry,
    clients: SyncClients,
    browser: Any,
) -> None:
    """Given a settled workload and a console started with --allow-actions, when a
    person pauses `charge` from the overview's form, resumes it from the paused list,
    redrives the dead refunds from the dead letters page, cancels a queued receipt
    from its page and purges the dead letters after typing `purge`, then each lands:
    the pause is in the table and then gone, the refunds are back on the main queue
    (queued, off the DLQ), the receipt is cancelled, and the DLQ is empty."""
    from playwright.async_api import expect

    tasks = declare_tasks(registry)
    sent = enqueue_workload(queue, tasks, throttled=2)
    await run_until_settled(aws_env, registry, sent)

    async with serving(queue, registry, allow_actions=True) as url:
        page = await browser.new_page(viewport={"width": 1360, "height": 900})
        await page.goto(url)
        await expect(page.locator("header .mode")).to_have_text("actions allowed")
        form = page.locator("form.pause-by-name")
        await form.locator("input[name=name]").fill("chrage")
        await form.get_by_role("button", name="Pause").click()
        await expect(page.locator(".problem")).to_contain_text("no task named 'chrage'")
        await page.goto(url)
        await form.locator("input[name=name]").fill("charge")
        await form.get_by_role("button", name="Pause").click()
        await expect(page.locator(".notice")).to_contain_text("task charge: paused")
        paused = list_pauses(clients.dynamodb, aws_env)
        assert list(paused.tasks) == ["charge"] and "(console)" in paused.tasks["charge"].by

        await page.goto(url)
        paused_list = page.locator("#paused-list")
        await paused_list.get_by_role("button", name="Resume task charge").click()
        await expect(page.locator(".notice")).to_contain_text("task charge: resumed")
        assert list_pauses(clients.dynamodb, aws_env).all() == []

        await page.goto(f"{url}dead-letters")
        await page.get_by_role("button", name="Redrive permanent_error").click()
        await expect(page.locator(".notice")).to_contain_text("redrove 3 task(s)")
        assert queue_counts(clients, aws_env.dlq_url)["visible"] == 0
        back = receive_all(clients, aws_env.queue_url)
        assert {json.loads(m["Body"])["id"] for m in back} == set(sent.dead)
        assert all(record_status(clients, aws_env, i) is Status.QUEUED for i in sent.dead)

        await page.goto(f"{url}tasks/{sent.delayed[0]}")
        await page.get_by_role("button", name="Cancel this task").click()
        await expect(page.locator(".notice")).to_contain_text("cancelled")
        assert record_status(clients, aws_env, sent.delayed[0]) is Status.CANCELLED

        clients.sqs.change_message_visibility_batch(
            QueueUrl=aws_env.queue_url,
            Entries=[
                {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                for n, m in enumerate(back)
            ],
        )
        await run_until_settled(aws_env, registry, sent)  # the refunds die again
        await page.goto(f"{url}dead-letters")
        purge = page.locator("form.purge")
        await purge.locator("input[name=confirm]").fill("yes")
        await purge.get_by_role("button", name="Purge").click()
        await expect(page.locator(".problem")).to_contain_text("confirm: type 'purge'")
        assert queue_counts(clients, aws_env.dlq_url)["visible"] == 3
        await page.goto(f"{url}dead-letters")
        await purge.locator("input[name=confirm]").fill("purge")
        await purge.get_by_role("button", name="Purge").click()
        await expect(page.locator(".notice")).to_contain_text("dead-letter queue purged")
        await page.close()
    await asyncio.to_thread(
        wait_until,
        lambda: sum(queue_counts(clients, aws_env.dlq_url).values()) == 0,
        what="the purged DLQ to be empty",
    )
