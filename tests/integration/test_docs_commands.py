"""Every command the README and docs/ show is run, so the docs cannot drift from the CLI.

Each ```sh block of README.md and docs/*.md is run line by line against the
embedded local AWS (``aws_env``), in a copy of examples/myproject (so the docs'
``myapp.tasks`` and ``orders.jsonl`` exist), as a reader would type it:

- ``dispatch ...`` (and ``pytest ...``: the example project's tests) runs and must
  exit 0, or the code its comment states (``# exit code 4``); ``dispatch run``
  without ``--until-empty``/``--for``, ``dispatch top`` without ``--once`` and
  ``dispatch dev`` run until they are interrupted (Ctrl-C, as the docs say) and
  must then exit 0;
- a block marked ``<!-- run as bash -->`` runs as one bash script instead (for
  what needs a shell: background jobs, pipes);
- ``export NAME=VALUE ...`` and ``eval "$(dispatch init ...)"`` set the
  environment of the lines after them; ``> FILE`` redirects stdout;
- ``TASK_ID`` stands for the id the block's last ``dispatch enqueue`` printed.

A block that cannot run here (it needs AWS, Docker, the network, or is a
``make`` target of the checkout) says so just above its fence with
``<!-- not run: REASON -->``; it is reported as a skip with that reason, and
``test_every_sh_block_runs_or_says_why`` fails on any other line the runner
cannot run, so nothing is skipped silently. ```python blocks are compiled
(top-level ``await`` allowed), so a syntax drift fails too.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from dispatch.core.config import Settings
from tests.integration.conftest import REPO

DOCS = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))
EXAMPLE_PROJECT = REPO / "examples" / "myproject"
FENCE = re.compile(
    r"(?:^<!--\s*(?:not run:\s*(?P<reason>[^\n]*?)|(?P<bash>run as bash))\s*-->\n(?:\n)?)?"
    r"^```(?P<lang>sh|python)\n(?P<body>.*?)^```$",
    re.MULTILINE | re.DOTALL,
)
# Blocks in docs this change could not edit, by their first line, with the reason their
# `<!-- not run: ... -->` mark will give: each is still a reported skip, never a silent one.
MARK_PENDING: dict[str, str] = {}
# Files the docs' commands read that are not part of examples/myproject.
FIXTURE_FILES = {
    "receipts.jsonl": '{"order_id": "1", "email": "ada@example.com"}\n'
    '{"order_id": "2", "email": "alan@example.com"}\n',
}
EXIT_COMMENT = re.compile(r"\bexit(?:s| code)? (\d)\b")
UNTIL_INTERRUPTED_START_S = 3.0  # how long a long-running command gets before Ctrl-C
READY_MARK = {"dev": "Ctrl-C stops"}  # what a command prints once it is up


@dataclass(frozen=True)
class Block:
    """One fenced block of a document."""

    doc: Path
    line: int
    lang: str
    body: str
    not_run: str | None
    as_bash: bool = False

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"


def blocks(lang: str) -> list[Block]:
    """The ``lang`` blocks of the README and docs/, in order."""
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            if match["lang"] == lang:
                line = text.count("\n", 0, match.start("lang")) + 1
                reason = match["reason"] or MARK_PENDING.get(match["body"].split("\n", 1)[0])
                block = Block(doc, line, lang, match["body"], reason, bool(match["bash"]))
                found.append(block)
    return found


SH_BLOCKS = blocks("sh")
PYTHON_BLOCKS = blocks("python")


@dataclass(frozen=True)
class Command:
    """One line of a sh block, parsed: what to run and what to expect."""

    text: str
    kind: str  # "dispatch", "pytest", "export", "eval", "unknown"
    argv: tuple[str, ...]
    stdout_to: str | None
    expect_exit: int

    @property
    def until_interrupted(self) -> bool:
        """A command that runs until Ctrl-C (the loop, the live view, the dev topology)."""
        if self.kind != "dispatch" or len(self.argv) < 2:
            return False
        sub, options = self.argv[1], set(self.argv[2:])
        return (
            (sub == "run" and not options & {"--until-empty", "--for"})
            or (sub == "top" and "--once" not in options)
            or sub == "dev"
        )


def parse_line(line: str) -> Command | None:
    """The command on one line (None for a blank or comment-only line)."""
    code, _, comment = _split_comment(line)
    if not code.strip():
        return None
    expect = EXIT_COMMENT.search(comment)
    exit_code = int(expect.group(1)) if expect else 0
    eval_form = re.fullmatch(r'\s*eval "\$\((dispatch [^)"]*)\)"\s*', code)
    if eval_form:
        return Command(line, "eval", tuple(shlex.split(eval_form.group(1))), None, exit_code)
    try:
        words = shlex.split(code)
    except ValueError:
        return Command(line, "unknown", (), None, exit_code)
    if words[0] == "export" and all(re.fullmatch(r"\w+=\S*", w) for w in words[1:]):
        return Command(line, "export", tuple(words[1:]), None, exit_code)
    stdout_to = None
    if len(words) >= 2 and words[-2] == ">":
        stdout_to, words = words[-1], words[:-2]
    shell_syntax = {"|", "&&", "||", ";", "&", "<", ">", "2>"}
    if words[0] in ("dispatch", "pytest") and not shell_syntax & set(words) and "$(" not in code:
        return Command(line, words[0], tuple(words), stdout_to, exit_code)
    return Command(line, "unknown", tuple(words), stdout_to, exit_code)


def _split_comment(line: str) -> tuple[str, str, str]:
    """``code  # comment`` -> (code, "#", comment), respecting quotes."""
    quote = None
    for index, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index], "#", line[index + 1 :]
    return line, "", ""


def commands(block: Block) -> list[Command]:
    """The block's commands, in order."""
    return [cmd for line in block.body.splitlines() if (cmd := parse_line(line))]


def _cli(argv: tuple[str, ...]) -> list[str]:
    """`dispatch ARGS` (or `pytest ARGS`) as a reader runs it: the console script beside
    this interpreter, so the current folder is on sys.path only if the tool puts it there
    (`python -c` or `-m` would add it and hide a regression)."""
    extra = ["-p", "no:cacheprovider"] if argv[0] == "pytest" else []
    script = Path(sys.executable).parent / argv[0]
    if script.exists():
        return [str(script), *extra, *argv[1:]]
    if argv[0] == "pytest":
        return [sys.executable, "-m", "pytest", *extra, *argv[1:]]
    return [sys.executable, "-c", "from dispatch.ops.cli import main; main()", *argv[1:]]


class Session:
    """A reader's terminal: a working folder, an environment, the last task id."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        self.last_task_id: str | None = None

    def run(self, cmd: Command, where: str) -> None:
        """Run one command as the docs show it; fail naming the doc line if it misbehaves."""
        if cmd.kind == "export":
            self.env.update(word.split("=", 1) for word in cmd.argv)
            return
        argv = tuple(self._substitute(word, where) for word in cmd.argv)
        if cmd.until_interrupted:
            self._run_until_interrupted(cmd, argv, where)
            return
        done = subprocess.run(  # noqa: S603 - this interpreter, our CLI, arguments from our docs
            _cli(argv),
            check=False,
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert done.returncode == cmd.expect_exit, (
            f"{where}: `{cmd.text.strip()}` exited {done.returncode}, the docs expect "
            f"{cmd.expect_exit}\nstdout: {done.stdout[-2000:]}\nstderr: {done.stderr[-2000:]}"
        )
        if cmd.kind == "eval":
            for line in done.stdout.splitlines():
                name, _, value = line.removeprefix("export ").partition("=")
                self.env[name] = shlex.split(value)[0] if value else ""
            return
        if cmd.stdout_to:
            (self.cwd / cmd.stdout_to).write_text(done.stdout, encoding="utf-8")
        if argv[1] == "enqueue" and done.returncode == 0 and "--json" not in argv:
            self.last_task_id = done.stdout.split()[0]

    def run_as_bash(self, block: Block) -> None:
        """Run a block marked ``<!-- run as bash -->`` as one script (``set -e``; job
        control on, as in a terminal, so ``kill %1`` stops a whole pipeline), with this
        interpreter's ``python`` and ``dispatch`` first on PATH."""
        bin_dir = Path(sys.executable).parent
        env = {**self.env, "PATH": f"{bin_dir}{os.pathsep}{self.env.get('PATH', '')}"}
        done = subprocess.run(  # noqa: S603 - bash running a block of our own docs
            ["bash", "-e", "-m", "-c", block.body],  # noqa: S607 - bash from PATH, as a reader runs it
            check=False,
            cwd=self.cwd,
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )
        assert done.returncode == 0, (
            f"{block.where}: the block exited {done.returncode}\nstdout: "
            f"{done.stdout[-2000:]}\nstderr: {done.stderr[-2000:]}"
        )

    def _substitute(self, word: str, where: str) -> str:
        if word != "TASK_ID":
            return word
        assert self.last_task_id, f"{where}: TASK_ID before any `dispatch enqueue` in the block"
        return self.last_task_id

    def _run_until_interrupted(self, cmd: Command, argv: tuple[str, ...], where: str) -> None:
        process = subprocess.Popen(  # noqa: S603 - as above
            _cli(argv),
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        ready = READY_MARK.get(argv[1])
        deadline = time.monotonic() + (60.0 if ready else UNTIL_INTERRUPTED_START_S)
        seen = ""
        while time.monotonic() < deadline and process.poll() is None:
            if ready:
                assert process.stdout is not None
                seen += process.stdout.readline()
                if ready in seen:
                    time.sleep(1.0)  # a reader reads the line before pressing Ctrl-C
                    break
            else:
                time.sleep(0.1)
        still_running = process.poll() is None
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
        assert still_running, (
            f"{where}: `{cmd.text.strip()}` should run until interrupted but exited "
            f"{process.returncode}\nstdout: {(seen + out)[-2000:]}\nstderr: {err[-2000:]}"
        )
        assert process.returncode == 0, (
            f"{where}: `{cmd.text.strip()}` exited {process.returncode} on Ctrl-C\n"
            f"stderr: {err[-2000:]}"
        )


def test_the_docs_have_sh_and_python_blocks() -> None:
    """Given the README and docs/, when their blocks are extracted, then there are some of
    each kind and several sh blocks run (the extraction did not silently find nothing)."""
    run = [b for b in SH_BLOCKS if b.not_run is None]

    assert len(PYTHON_BLOCKS) >= 5
    assert len(run) >= 5


def test_every_sh_block_runs_or_says_why() -> None:
    """Given every sh block, when its lines are parsed, then a block the test runs holds
    only lines it can run, and no block hiding behind a `not run` mark holds a
    `dispatch enqueue`, `status`, `dlq list` or `cron next` line (those must run)."""
    unrunnable, hidden = [], []
    for block in SH_BLOCKS:
        for cmd in commands(block):
            if block.not_run is None and not block.as_bash and cmd.kind == "unknown":
                unrunnable.append(f"{block.where}: {cmd.text.strip()}")
            if block.not_run is not None and cmd.kind == "dispatch":
                sub = " ".join(cmd.argv[1:3])
                if cmd.argv[1] in ("enqueue", "status") or sub in ("dlq list", "cron next"):
                    hidden.append(f"{block.where}: {cmd.text.strip()}")

    assert unrunnable == [], "mark these blocks <!-- not run: REASON --> or make them runnable"
    assert hidden == [], "these commands must run: move them out of the not-run block"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("block", SH_BLOCKS, ids=[b.where for b in SH_BLOCKS])
def test_sh_block_runs_as_documented(block: Block, aws_env: Settings, tmp_path: Path) -> None:
    """Given a sh block of the docs and a fresh queue, DLQ and table on the emulator, when
    its lines run in order in a copy of examples/myproject, then each exits as the docs
    say (0 unless stated; the long-running ones stop cleanly on Ctrl-C)."""
    if block.not_run is not None:
        pytest.skip(f"{block.where} not run: {block.not_run}")
    cwd = tmp_path / "myproject"
    shutil.copytree(EXAMPLE_PROJECT, cwd, ignore=shutil.ignore_patterns("__pycache__"))
    for name, content in FIXTURE_FILES.items():
        (cwd / name).write_text(content, encoding="utf-8")
    session = Session(cwd)
    if block.as_bash:
        session.run_as_bash(block)
        return

    for cmd in commands(block):
        session.run(cmd, block.where)


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[b.where for b in PYTHON_BLOCKS])
def test_python_block_compiles(block: Block) -> None:
    """Given a python block of the docs, when it is compiled (top-level await allowed, as
    in a notebook or `python -m asyncio`), then it is valid Python."""
    compile(
        block.body, block.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
    )


def test_every_list_of_dead_letter_reasons_names_them_all() -> None:
    """Given the dead-letter reasons the code has (``Reason``), when a paragraph or
    table row of the README or docs/ names three or more of them in backticks, then it
    names every one (a new reason cannot be left out of a list again)."""
    from dispatch.core.deadletter import Reason

    reasons = {r.value for r in Reason}
    incomplete, lists = [], 0
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for number, paragraph in enumerate(re.split(r"\n\s*\n|\n(?=\|)", text)):
            named = set(re.findall(r"`(\w+)`", paragraph)) & reasons
            if len(named) >= 3:
                lists += 1
                if named != reasons:
                    missing = sorted(reasons - named)
                    incomplete.append(f"{doc.relative_to(REPO)} #{number}: lacks {missing}")

    assert lists >= 2  # docs/formats.md's dispatch-reason row, docs/operations.md's redrive
    assert incomplete == []
