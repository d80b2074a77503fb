"""`dispatch ui` over plain HTTP against the embedded local AWS: the security model and bad input.

The console is served on a real loopback port (as `dispatch ui --port 0` serves it) and
spoken to with an HTTP client: read-only mode refuses actions; an action needs this
process's token (form or header, and the SameSite cookie) and the console's own
Origin; a foreign Host header is refused (DNS rebinding); bad filter input is a 400
page naming the field, never a trace; no secret reaches any page; the CLI refuses a
non-loopback --host without --allow-remote and prints the URL it serves on.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
from rich.console import Console

from dispatch import group, task
from dispatch.core.config import Settings
from dispatch.local.demo import run_demo
from dispatch.ops.pausing import list_pauses
from dispatch.producer.enqueue import Queue
from dispatch.store.aws import SyncClients
from dispatch.store.state import Status, SyncStateStore
from dispatch.tasks.registry import Registry
from tests.integration.conftest import REPO, dispatch_cli, running_dispatcher, wait_until
from tests.integration.console_world import (
    SECRET,
    declare_tasks,
    enqueue_workload,
    run_until_settled,
    serving,
)

TOKEN = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client that keeps cookies for 127.0.0.1 (a browser does)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as made:
        yield made


async def fetch(
    session: aiohttp.ClientSession, method: str, url: str, **options: object
) -> tuple[int, str]:
    async with session.request(method, url, allow_redirects=False, **options) as answer:  # type: ignore[arg-type]
        return answer.status, await answer.text()


async def token_of(session: aiohttp.ClientSession, url: str) -> str:
    status, page = await fetch(session, "GET", url)
    assert status == 200, page
    found = TOKEN.search(page)
    assert found, "no action form carries the token"
    return found.group(1)


async def test_a_read_only_console_refuses_every_action(
    aws_env: Settings,
    queue: Queue,
    registry: Registry,
    clients: SyncClients,
    session: aiohttp.ClientSession,
) -> None:
    """Given a console started without --allow-actions, when a page is read and each
    action is posted from its own origin, then the page offers no action form, every
    action is refused with 403 saying the console is read-only, a GET of an action is
    405, and nothing was paused."""
    async with serving(queue, registry) as url:
        status, page = await fetch(session, "GET", url)
        answers = [
            await fetch(
                session,
                "POST",
                f"{url}actions/{action}",
                data={"kind": "task", "name": "charge", "csrf": "x", "confirm": "purge"},
                headers={"Origin": url.rstrip("/")},
            )
            for action in ("pause", "resume", "cancel", "redrive", "purge")
        ]
        get_action = await fetch(session, "GET", f"{url}actions/pause")

    assert status == 200 and "read-only" in page and 'action="/actions/' not in page
    assert [code for code, _ in answers] == [403] * 5
    assert all("read-only" in body for _, body in answers)
    assert get_action[0] == 405
    assert list_pauses(clients.dynamodb, aws_env).all() == []


async def test_an_action_needs_the_token_the_cookie_and_the_consoles_own_origin(
    aws_env: Settings,
    queue: Queue,
    registry: Registry,
    clients: SyncClients,
    session: aiohttp.ClientSession,
) -> None:
    """Given a console with --allow-actions, when a pause is posted without the token,
    from a foreign origin, with neither Origin nor Referer, or with the token but
    without the cookie (another client), then each is refused (403) and nothing is
    paused; with the token and the own Origin it lands in the table, and a resume with
    the token in the X-CSRF-Token header lifts it."""
    async with serving(queue, registry, allow_actions=True) as url:
        own = url.rstrip("/")
        token = await token_of(session, url)
        pause = f"{url}actions/pause"
        form = {"kind": "task", "name": "charge"}
        no_token = await fetch(session, "POST", pause, data=form, headers={"Origin": own})
        wrong_token = await fetch(
            session, "POST", pause, data={**form, "csrf": "forged"}, headers={"Origin": own}
        )
        foreign = await fetch(
            session,
            "POST",
            pause,
            data={**form, "csrf": token},
            headers={"Origin": "http://evil.example"},
        )
        no_origin = await fetch(session, "POST", pause, data={**form, "csrf": token})
        async with aiohttp.ClientSession() as stranger:  # no cookie
            no_cookie = await fetch(
                stranger, "POST", pause, data={**form, "csrf": token}, headers={"Origin": own}
            )
        refused = [no_token, wrong_token, foreign, no_origin, no_cookie]
        paused_before = list_pauses(clients.dynamodb, aws_env).all()

        done = await fetch(
            session, "POST", pause, data={**form, "csrf": token}, headers={"Origin": own}
        )
        paused = list_pauses(clients.dynamodb, aws_env).tasks
        resumed = await fetch(
            session,
            "POST",
            f"{url}actions/resume",
            data=form,
            headers={"Origin": own, "X-CSRF-Token": token},
        )

    assert [code for code, _ in refused] == [403] * 5
    assert "token" in no_token[1] and "token" in wrong_token[1] and "token" in no_cookie[1]
    assert "Origin" in foreign[1] and "Origin" in no_origin[1]
    assert paused_before == []
    assert done[0] == 200 and "task charge: paused" in done[1]
    assert list(paused) == ["charge"] and "(console)" in paused["charge"].by
    assert resumed[0] == 200 and "resumed" in resumed[1]
    assert list_pauses(clients.dynamodb, aws_env).all() == []


async def test_a_foreign_host_header_is_refused(
    aws_env: Settings, queue: Queue, registry: Registry, session: aiohttp.ClientSession
) -> None:
    """Given a console on 127.0.0.1, when a request names another host (as a page
    whose DNS name was rebound to 127.0.0.1 sends) or another port, then it is
    refused with 403 before any page is read; localhost and 127.0.0.1 on the right
    port are served."""
    async with serving(queue, registry) as url:
        port = urlsplit(url).port
        foreign = await fetch(session, "GET", url, headers={"Host": f"evil.example:{port}"})
        other_port = await fetch(session, "GET", url, headers={"Host": "127.0.0.1:1"})
        no_port = await fetch(session, "GET", url, headers={"Host": "127.0.0.1"})
        json_api = await fetch(
            session, "GET", f"{url}api/live", headers={"Host": f"evil.example:{port}"}
        )
        local = await fetch(session, "GET", url, headers={"Host": f"localhost:{port}"})

    assert [foreign[0], other_port[0], no_port[0], json_api[0]] == [403] * 4
    assert "foreign Host" in foreign[1] and "queue" not in foreign[1]
    assert local[0] == 200 and "Overview" in local[1]


@pytest.mark.parametrize(
    ("path", "status", "says"),
    [
        ("tasks?status=bogus", 400, "status: unknown status 'bogus'"),
        ("tasks?status=succeeded", 400, "status: status 'succeeded' is not indexed"),
        ("tasks?since=yesterday", 400, "since: 'yesterday' is neither a duration ago"),
        ("tasks?until=13%2F45%2F2026", 400, "until: "),
        ("tasks?running_longer_than=ten", 400, "running_longer_than: 'ten' is not a duration"),
        ("tasks?status=dead&next=garbage", 400, "next: not a token this listing gave"),
        ("tasks?task=" + "x" * 300, 400, "task: 300 characters, over the limit of 128"),
        ("tasks?limit=0", 400, "limit: '0' is not a whole number from 1 to 1000"),
        ("tasks?task=a%00b", 400, "task: holds a control character"),
        ("tasks/" + "a" * 300, 400, "id: 300 characters, over the limit of 128"),
        ("task?id=", 400, "id: required"),
        ("tasks/no-such-task", 404, "no task with id 'no-such-task'"),
        ("nothing-here", 404, "nothing at /nothing-here"),
    ],
)
async def test_bad_input_gets_a_clear_page_naming_what_is_wrong(
    *,
    aws_env: Settings,
    queue: Queue,
    registry: Registry,
    session: aiohttp.ClientSession,
    path: str,
    status: int,
    says: str,
) -> None:
    """Given a console, when a page is asked with a bad filter, id or path, then the
    answer is a page with the status and a line naming the field and why: no trace."""
    async with serving(queue, registry) as url:
        got, page = await fetch(session, "GET", f"{url}{path}")

    assert got == status
    assert says in page.replace("&#39;", "'")
    assert "Traceback" not in page and 'File "' not in page


async def test_a_token_from_another_listing_is_refused_naming_next(
    aws_env: Settings, queue: Queue, registry: Registry, session: aiohttp.ClientSession
) -> None:
    """Given dead tasks listed a page at a time, when the next page's token is used with
    another status, then the answer is a 400 naming `next`; with its own status it lists
    the next page."""
    tasks = declare_tasks(registry)
    sent = enqueue_workload(queue, tasks, throttled=0)
    await run_until_settled(aws_env, registry, sent)
    async with serving(queue, registry) as url:
        _, first = await fetch(session, "GET", f"{url}tasks?status=dead&limit=2")
        token = re.search(r'next=([^"&]+)', first)
        assert token, first
        wrong = await fetch(session, "GET", f"{url}tasks?status=retrying&next={token.group(1)}")
        right = await fetch(session, "GET", f"{url}tasks?status=dead&limit=2&next={token.group(1)}")

    assert first.count('href="/tasks/') == 2
    assert wrong[0] == 400 and "next: not a token this listing gave" in wrong[1]
    assert right[0] == 200 and right[1].count('href="/tasks/') == 1


async def test_no_secret_reaches_any_page(
    aws_env: Settings,
    registry: Registry,
    monkeypatch: pytest.MonkeyPatch,
    session: aiohttp.ClientSession,
) -> None:
    """Given AWS credentials and a signing key in the environment, a task that died with
    a password argument (also in its error message) and one whose result holds a session
    token, when every page and every task's page is read, then none of those values is in
    any page's HTML or the live JSON, and the task page shows [REDACTED] where they were."""
    markers = {
        "AWS_ACCESS_KEY_ID": "AKIACONSOLEMARKER01",
        "AWS_SECRET_ACCESS_KEY": "aws-secret-console-marker",
        "AWS_SESSION_TOKEN": "aws-session-console-marker",
        "DISPATCH_SIGNING_KEY": "signing-key-console-marker",
    }
    for name, value in markers.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    assert settings.signing_keys == ("signing-key-console-marker",)
    queue = Queue(settings)
    tasks = declare_tasks(registry)
    sent = enqueue_workload(queue, tasks, throttled=1)
    await run_until_settled(settings, registry, sent)
    pages = ["", "tasks", "tasks?status=dead", "tasks?status=retrying", "dead-letters"]
    pages += ["resources", "api/live"]
    pages += [f"tasks/{task_id}" for task_id in sent.dead + sent.succeeded + sent.retrying]
    try:
        async with serving(queue, registry) as url:
            answers = [await fetch(session, "GET", f"{url}{page}") for page in pages]
    finally:
        queue.close()

    assert [status for status, _ in answers] == [200] * len(pages)
    for page, (_, body) in zip(pages, answers, strict=True):
        for secret in (SECRET, *markers.values()):
            assert secret not in body, f"{secret} shown on /{page}"
    dead_page = answers[pages.index(f"tasks/{sent.dead[0]}")][1]
    assert "PermanentError" in dead_page and "password=[REDACTED]" in dead_page
    assert '"password": "[REDACTED]"' in dead_page.replace("&#34;", '"')
    succeeded_page = answers[pages.index(f"tasks/{sent.succeeded[0]}")][1]
    assert '"session_token": "[REDACTED]"' in succeeded_page.replace("&#34;", '"')


def test_the_cli_refuses_a_non_loopback_host_without_the_explicit_flag() -> None:
    """`dispatch ui --host 0.0.0.0` (or any non-loopback address) is a usage error (2)
    naming --allow-remote; with --allow-remote, a wildcard address still needs the host
    names browsers will use (--allowed-host), so a foreign Host stays refused."""
    wildcard = dispatch_cli("ui", "--host", "0.0.0.0")  # noqa: S104 - refused, never bound
    address = dispatch_cli("ui", "--host", "192.0.2.10")
    no_names = dispatch_cli("ui", "--host", "0.0.0.0", "--allow-remote")  # noqa: S104 - refused

    assert wildcard.returncode == address.returncode == no_names.returncode == 2
    assert "--allow-remote" in wildcard.stderr and "--allow-remote" in address.stderr
    assert "--allowed-host" in no_names.stderr
    assert wildcard.stdout == address.stdout == no_names.stdout == ""


def test_the_cli_serves_on_a_free_port_and_prints_its_url_alone_on_a_line(
    aws_env: Settings,
) -> None:
    """Given the environment a user sets, when `dispatch ui --port 0` runs, then its
    first line of stdout is the URL it serves on, the overview answers there, and
    Ctrl-C (SIGINT) stops it cleanly (exit 0)."""
    process = subprocess.Popen(
        [sys.executable, "-c", "from dispatch.ops.cli import main; main()", "ui", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=os.environ.copy(),
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", line), line
        with urllib.request.urlopen(line, timeout=30) as answer:  # noqa: S310 - our own loopback URL
            page = answer.read().decode()
            headers = answer.headers
        process.send_signal(signal.SIGINT)
        _, errors = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert "Overview" in page and "read-only" in page
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert "SameSite=Strict" in headers["Set-Cookie"] and "HttpOnly" in headers["Set-Cookie"]
    assert process.returncode == 0, errors
    assert "Traceback" not in errors


def test_dispatch_dev_serves_the_console_beside_its_dispatcher(tmp_path: Path) -> None:
    """Given `dispatch dev --ui-port 0` in a fresh folder, when it is up, then it says
    where the console serves (and no longer suggests `dispatch ui`), the overview there
    shows dev's own queue with actions allowed, a task enqueued through the printed
    exports shows succeeded on its page once it ran, and Ctrl-C stops both (exit 0)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DISPATCH_"))}
    cli = [sys.executable, "-c", "from dispatch.ops.cli import main; main()"]
    process = subprocess.Popen(  # noqa: S603 - our own command line
        [*cli, "dev", "--ui-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**env, "COLUMNS": "400"},
    )
    printed: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            printed.append(line)
            if line.startswith("console on "):
                break
        url = printed[-1].split()[2]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url), printed
        with urllib.request.urlopen(url, timeout=30) as answer:  # noqa: S310 - our own loopback URL
            overview = answer.read().decode()
        exports = dict(re.findall(r"export (\w+)=(\S+)", "".join(printed)))
        arguments = '{"order_id": "1", "email": "a@b.c"}'
        enqueued = subprocess.run(  # noqa: S603 - our own command line
            [*cli, "enqueue", "send_receipt", "--args", arguments, "--json"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={**env, **exports},
            check=True,
        )
        (task_id,) = json.loads(enqueued.stdout)
        page = wait_until_shown(f"{url}tasks/{task_id}", ">succeeded<")
        process.send_signal(signal.SIGINT)
        _, errors = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert "dispatch ui" not in "".join(printed)  # dev serves it: nothing to run by hand
    assert "Overview" in overview and "actions allowed" in overview
    assert exports["DISPATCH_QUEUE_URL"].rsplit("/", 1)[1] in overview
    assert task_id in page and ">succeeded<" in page
    assert process.returncode == 0, errors


def wait_until_shown(url: str, text: str, timeout_s: float = 30.0) -> str:
    """The page at ``url`` once it shows ``text`` (a task settles in a second or so)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with urllib.request.urlopen(url, timeout=30) as answer:  # noqa: S310 - our own loopback URL
            page = str(answer.read().decode())
        if text in page or time.monotonic() > deadline:
            return page
        time.sleep(0.2)


def test_the_demo_prints_the_console_command_that_opens_its_data() -> None:
    """Given `dispatch demo --keep`, when a person pastes the export lines it prints into
    another terminal and runs the `dispatch ui` line printed under them, then the console
    serves the demo's dead letters (the foreign producer's malformed messages); without
    --keep the demo ends saying how to get there."""
    out = io.StringIO()
    seen: dict[str, object] = {}

    def explore() -> None:  # the other terminal, before Ctrl-C
        text = out.getvalue()
        exports = dict(re.findall(r"export (\w+)=(\S+)", text))
        seen["command"] = re.search(r"^\s+(dispatch ui)\s+#", text, re.MULTILINE)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DISPATCH_"))}
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from dispatch.ops.cli import main; main()",
                "ui",
                "--port",
                "0",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**env, **exports},
        )
        try:
            assert process.stdout is not None
            url = process.stdout.readline().strip()
            with urllib.request.urlopen(f"{url}dead-letters", timeout=30) as answer:  # noqa: S310 - our own loopback URL
                seen["page"] = answer.read().decode()
        finally:
            process.send_signal(signal.SIGINT)
            process.communicate(timeout=30)

    result = run_demo(orders=5, console=Console(file=out, width=200), keep=True, wait=explore)
    ended = io.StringIO()
    run_demo(orders=5, console=Console(file=ended, width=300))

    assert result.ok, out.getvalue()
    assert seen["command"], out.getvalue()
    page = str(seen["page"])
    assert "Dead letters" in page and "malformed" in page
    assert "then dispatch ui and open http://127.0.0.1:8321/" in ended.getvalue()


async def test_a_group_callbacks_page_shows_the_groups_progress(
    aws_env: Settings, queue: Queue, registry: Registry, session: aiohttp.ClientSession
) -> None:
    """Given a group of three children and its callback, enqueued and not yet run, when
    the callback's page is read, then it shows the group: three children, none done,
    callback not sent; a child's page shows no group section."""

    @task(registry=registry)
    def part(n: int) -> int:
        return n

    @task(registry=registry)
    def total(results: list[int]) -> int:
        return sum(results)

    handle = group([part.message(n=n) for n in range(3)], queue=queue).then(total.message())
    async with serving(queue, registry) as url:
        status, page = await fetch(session, "GET", f"{url}tasks/{handle.id}")

    assert status == 200, page
    section = page.split("<h2>Group</h2>", 1)[1]
    assert re.search(r"<th>children</th><td>3</td>", section)
    assert re.search(r"<th>done</th><td>0</td>", section)
    assert re.search(r"<th>callback_sent</th><td>False</td>", section)


async def test_every_asset_is_the_consoles_own_so_it_works_offline(
    aws_env: Settings, queue: Queue, registry: Registry, session: aiohttp.ClientSession
) -> None:
    """Given the console, when a page is read, then it loads only its own stylesheet and
    script (no CDN, no other site), both served from the package; a name outside the
    static folder is a 404."""
    async with serving(queue, registry) as url:
        _, page = await fetch(session, "GET", url)
        css = await fetch(session, "GET", f"{url}static/console.css")
        script = await fetch(session, "GET", f"{url}static/chart.js")
        outside = await fetch(session, "GET", f"{url}static/..%2F__init__.py")
        missing = await fetch(session, "GET", f"{url}static/nothing.js")

    assert re.findall(r'(?:src|href)="([^"]+\.(?:css|js))"', page) == [
        "/static/console.css",
        "/static/chart.js",
    ]
    links = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert links and all(link.startswith("/") and not link.startswith("//") for link in links)
    assert css[0] == script[0] == 200 and "fetch(" in script[1] and "table" in css[1]
    assert outside[0] == missing[0] == 404


async def test_a_running_task_is_cancelled_from_its_page(
    aws_env: Settings,
    queue: Queue,
    registry: Registry,
    clients: SyncClients,
    session: aiohttp.ClientSession,
) -> None:
    """Given an async task blocked in its handler and a console with --allow-actions,
    when its page is opened, then it offers Cancel; when that is posted, then the
    dispatcher running it is asked (as `dispatch cancel` asks: through the control item
    it reads every refresh) and the record ends cancelled within seconds, and the page
    no longer offers it."""
    started = asyncio.Event()

    @task(registry=registry)
    async def export(n: int) -> None:
        started.set()
        await asyncio.Event().wait()  # only a cancel ends it

    task_id = queue.enqueue(export.message(n=1))
    async with (
        running_dispatcher(aws_env, registry, pause_refresh_s=0.2, finish_within_s=10),
        serving(queue, registry, allow_actions=True) as url,
    ):
        await asyncio.wait_for(started.wait(), timeout=30)
        status, page = await fetch(session, "GET", f"{url}tasks/{task_id}")
        token = TOKEN.search(page)
        assert status == 200 and 'action="/actions/cancel"' in page and token, page
        done = await fetch(
            session,
            "POST",
            f"{url}actions/cancel",
            data={"task_id": task_id, "csrf": token.group(1)},
            headers={"Origin": url.rstrip("/")},
        )
        store = SyncStateStore(clients.dynamodb, aws_env.table)
        await asyncio.to_thread(
            wait_until,
            lambda: (found := store.get(task_id)) is not None and found.status is Status.CANCELLED,
            what="the running task cancelled within the 0.2 s refresh and the writes",
            timeout_s=10,  # the request reaches the dispatcher through the control item
        )
        _, after = await fetch(session, "GET", f"{url}tasks/{task_id}")

    assert done[0] == 200 and "running" in done[1], done
    assert 'action="/actions/cancel"' not in after
