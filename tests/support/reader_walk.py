"""The README and the chapters, run as a new reader runs them: tests/test_reader_walk.py.

How the documents mark what the reader runs:

- An indented block (four spaces) holds shell commands, one a line (a line ending in `\\`
  goes on in the next). Each is run, in reading order, and must exit 0 within a deadline.
  Code to read and output to compare go in fenced blocks (```), never in indented ones.
- `<!-- terminals -->`, then a blank line, before an indented block: each command in it is
  a long-running process in a terminal of its own. They start in order, each waited for
  until it is ready (READY), run beside the commands that follow, and are stopped at the end
  of the part (SIGTERM, then SIGKILL after a deadline).
- `pip install -r FILE...` is not run as it stands: it names what the reader's virtualenv
  holds from then on, a fresh one built once per content of those files (tests/support/venvs.py).
- NOT_RUN is the one list of commands not run here, each with its reason.
- SERVICES lists where the prose tells the reader that a service must run. Each part runs in
  a network namespace of its own, where nothing listens (no Redis, no RabbitMQ, none of the
  ports the commands use): a service runs there only from the sentence that told the reader,
  to the end of that part.
- CLAIMS: what the prose says a command's result is, checked on the spans it left.

Reading order: the README up to its list of chapters, the chapters, then the rest of the
README, each part from a fresh copy of the repository (a reader's clone). Every command and
every terminal starts in the copy's root, with nothing in its environment but PATH (the
virtualenv first), VIRTUAL_ENV, HOME, TMPDIR and LANG.

Run as a script (`python tests/support/reader_walk.py PART CLONE VENVS`), it walks one part; the
test runs it inside the network namespace.
"""

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness.polling import poll_until, port_answers
from harness.processes import stop_all
from tests.support import venvs
from tests.support.traces import (
    CONNECTED_EDGES,
    EMAIL_RUN,
    PUBLISH,
    REQUEST,
    RUN,
    assert_edges,
    assert_orphaned,
    complete,
    names,
)
from tracetools.sources import load

ROOT = Path(__file__).resolve().parents[2]
COMMAND_DEADLINE = 300
READY_DEADLINE = 60
CLAIM_DEADLINE = 90
STOP_DEADLINE = 20

DOCKER = ("no Docker engine on the machines that run the tests: tests/test_compose.py checks "
          "docker-compose.yml as data, against the commands the tests run")
YOUR_TRACES = ("reads the reader's own traces: chapter 6 runs the doctor on traces it makes, "
               "tests/test_doctor_sources.py on Jaeger's and Tempo's APIs")
YOUR_STORE = ("installs or runs the doctor where the reader's own spans are: "
              "tests/test_package.py installs the package and runs its script, "
              "tests/test_doctor_clickhouse.py runs its SQL on ClickHouse's engine and on "
              "compressed files")
OPT_IN = ("an opt-in run of minutes or hours: the default suite runs the same tests at a "
          "smaller size")
NOT_RUN = {  # (document, command): why the walk does not run it
    ("README.md", "python -m pytest"): "the suite itself, which .ci/run runs: this walk is in it",
    ("README.md", "docker compose up --build"): DOCKER,
    ("README.md", "curl -X POST localhost:5000/orders -H 'Content-Type: application/json' "
                  "-d '{\"item\": \"book\", \"quantity\": 1}'"): DOCKER,
    ("README.md", "curl -X POST localhost:5001/orders -H 'Content-Type: application/json' "
                  "-d '{\"item\": \"book\", \"quantity\": 1}'"): DOCKER,
    ("README.md", "python doctor.py traces.jsonl --worker-service orders-worker"): YOUR_TRACES,
    ("README.md", "python doctor.py http://localhost:16686/api/v3/traces --service orders-web "
                  "--service orders-worker"): YOUR_TRACES,
    ("06-prove-it-in-your-app.md", "python doctor.py http://jaeger:16686/api/v3/traces "
     "--service orders-web --service orders-worker --lookback 30m"): YOUR_TRACES,
    ("README.md", "PROBE_TASKS=100000 python -m pytest tests/test_main_process_failures.py "
                  "-k bounded -s"): OPT_IN,
    ("README.md", "UPDATE_README=1 SOAK_TASKS=10000 python -m pytest tests/test_soak.py "
                  "tests/test_readme_reliability.py"): OPT_IN,
    ("README.md", "UPDATE_README=1 LOAD_ORDERS=20000 python -m pytest tests/test_load.py "
                  "tests/test_sampling.py tests/test_readme_reliability.py"): OPT_IN,
    ("README.md", 'pip install ".[clickhouse]"    # in a checkout: the doctor and its '
                  "script, nothing heavy"): YOUR_STORE,
    ("README.md", 'celery-trace-doctor "clickhouse://ch.internal:8123/otel?table=otel_traces" '
                  "--since 1h"): YOUR_STORE,
    ("README.md", 'pip install ".[files]"         # chDB, about 530 MB'): YOUR_STORE,
    ("README.md", "celery-trace-doctor traces.jsonl.zst"): YOUR_STORE,
    ("README.md", "python -m benchmarks.run"): "a benchmark, minutes long on a quiet machine: "
                                               "its figures are one recorded run, never a test",
}

# (document, service, the words that tell the reader it must run)
SERVICES = [
    ("README.md", "redis", "To run it on Redis instead"),
    ("07-your-framework.md", "redis", "with Redis running on 127.0.0.1:6379"),
]
SERVICE_COMMANDS = {
    "redis": ["redis-server", "--port", "6379", "--bind", "127.0.0.1", "--save", "",
              "--appendonly", "no"],
}
SERVICE_PORTS = {"redis": 6379}


@dataclass
class Part:
    name: str
    path: Path
    start: int  # where in the document's text it starts and ends
    end: int


@dataclass
class Command:
    text: str
    position: int  # in the document's text
    terminal: bool


def reading_order():
    readme = ROOT / "README.md"
    text = readme.read_text()
    # The README up to the end of its list of chapters, where a new reader follows the link.
    split = text.index("\n## ", text.index("\n## The tutorial") + 1) + 1
    chapters = sorted((ROOT / "tutorial").glob("[0-9][0-9]-*.md"))
    return [
        Part("README.md, up to the tutorial", readme, 0, split),
        *(Part(path.name, path, 0, len(path.read_text())) for path in chapters),
        Part("README.md, from Run the tests", readme, split, len(text)),
    ]


def commands(part):
    """The commands of PART's indented blocks, in order."""
    found, in_fence, block, lines = [], False, None, part.path.read_text().splitlines(True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    for number, line in enumerate(lines):
        if line.startswith("```"):
            in_fence = not in_fence
        indented = line.startswith("    ") and line.strip() and not in_fence
        if indented and block is None and number > 0 and not lines[number - 1].strip():
            marker = lines[number - 2].strip() if number > 1 else ""
            block = {"terminal": marker == "<!-- terminals -->", "lines": []}
        if block is not None and indented:
            block["lines"].append(line.strip().rstrip("\\").strip())
            if not line.rstrip().endswith("\\"):  # else the command goes on in the next line
                found.append(Command(" ".join(block["lines"]), offsets[number],
                                     block["terminal"]))
                block["lines"] = []
        elif block is not None and line.strip():
            block = None
    return [c for c in found if part.start <= c.position < part.end]


def installs(command):
    """The requirements files of `pip install -r A -r B`, or None for another command."""
    words = command.text.split()
    if words[:2] != ["pip", "install"]:
        return None
    files = words[3::2]
    if words[2::2] != ["-r"] * len(files) or not files:
        raise ValueError(f"the walk reads `pip install -r FILE...` only, not {command.text!r}")
    return files


def plan(parts):
    """(part number, command, the requirements files installed once it ran), in order."""
    installed = []
    for number, part in enumerate(parts):
        for command in commands(part):
            if (part.path.name, command.text) in NOT_RUN:
                continue
            installed = installed + [f for f in installs(command) or [] if f not in installed]
            yield number, command, installed


def installed_before(parts, number):
    """The requirements files the parts before part NUMBER told the reader to install."""
    return ([files for n, _, files in plan(parts) if n < number] or [[]])[-1]


def needs_venv(parts):
    """Every list of requirements files some command runs with."""
    wanted = []
    for number, command, installed in plan(parts):
        runs = not installs(command) and (parts[number].path.name, command.text) not in NOT_RUN
        if runs and installed not in wanted:
            wanted.append(installed)
    return wanted


# -- running a part, inside its network namespace ---------------------------------------


class WalkFailed(Exception):
    pass


def port_of(command, flag, default):
    found = re.search(rf"{flag}[ =](\d+)", command)
    return int(found.group(1)) if found else default


# How the walk knows that a terminal is ready, as the reader sees it: (what the command
# contains, its readiness). A worker's banner lists its queues at any log level (" ready."
# comes at INFO only); a message published before it consumes waits in the broker.
READY = [
    (" worker", lambda command, log: "[queues]" in log),
    ("tracetools.sink", lambda command, log: port_answers(port_of(command, "--port", 4318))),
    ("app.py", lambda command, log: port_answers(port_of(command, "FLASK_RUN_PORT", 5000))),
    ("runserver", lambda command, log: port_answers(8000)),
]


class Walk:
    def __init__(self, part, clone, venv_for):
        self.part, self.clone, self.venv_for = part, Path(clone), venv_for
        self.installed, self.terminals, self.services, self.report = [], [], {}, []
        self.checked = []
        self.tmp = self.clone.parent / "tmp"
        self.tmp.mkdir(exist_ok=True)

    def env(self):
        venv = self.venv_for(self.installed)
        if not (venv / "complete").exists():
            raise WalkFailed(f"no virtualenv was built for {self.installed}")
        return {
            "PATH": f"{venv}/bin:/usr/local/bin:/usr/bin:/bin", "VIRTUAL_ENV": str(venv),
            "HOME": os.environ.get("HOME", "/root"), "TMPDIR": str(self.tmp),
            "LANG": "C.UTF-8",
        }

    def say(self, line):
        self.report.append(line)

    def run(self, installed):
        self.installed = list(installed)
        text = self.part.path.read_text()
        told = [(service, said.start()) for document, service, words in SERVICES
                if document == self.part.path.name for said in [says(text, words)]
                if said and self.part.start <= said.start() < self.part.end]
        try:
            for command in commands(self.part):
                for service, position in told:
                    if position < command.position and service not in self.services:
                        self.start_service(service)
                self.step(command)
            self.check_what_the_part_declares(text)
        finally:
            self.stop()
        return self.report

    def check_what_the_part_declares(self, text):
        for document, service, words in SERVICES:
            if document == self.part.path.name and self.part.start == 0 and not says(text, words):
                raise WalkFailed(f"SERVICES: {document} no longer says {words!r}")
        for (document, command), claim in CLAIMS.items():
            # The README is read in two parts: a claim belongs to the one that holds it.
            mine = command in text[self.part.start:self.part.end]
            if document == self.part.path.name and mine and claim not in self.checked:
                # The result the prose claims, checked all the same: it names what is missing.
                claim(self)
                raise WalkFailed(f"the prose claims what `{command}` shows, and never gives "
                                 f"it as a command to run")

    def step(self, command):
        if (self.part.path.name, command.text) in NOT_RUN:
            self.say(f"not run: {command.text}: {NOT_RUN[self.part.path.name, command.text]}")
            return
        files = installs(command)
        if files:
            for name in files:
                if not (self.clone / name).exists():
                    raise WalkFailed(f"`{command.text}`: there is no {name}")
            self.installed += [f for f in files if f not in self.installed]
            self.say(f"installed: {' '.join(files)} (a fresh virtualenv with "
                     f"{', '.join(self.installed)})")
        elif command.terminal:
            self.start_terminal(command.text)
        else:
            self.run_command(command.text)
            claim = CLAIMS.get((self.part.path.name, command.text))
            if claim:
                claim(self)
                self.checked.append(claim)
                self.say(f"checked: {' '.join(claim.__doc__.split())}")

    def run_command(self, text):
        if re.search(r"&\s*$", text):
            raise WalkFailed(f"`{text}`: a background job; a long-running process goes in a "
                             f"<!-- terminals --> block")
        began = time.monotonic()
        log_path = self.tmp / "command.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(["bash", "-c", text], cwd=self.clone, env=self.env(),
                                       stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            process.wait(COMMAND_DEADLINE)
            finished = True
        except subprocess.TimeoutExpired:
            finished = False
        stop_all([process], STOP_DEADLINE)  # and whatever it left running behind it
        output = log_path.read_text(errors="replace")
        if not finished:
            raise WalkFailed(f"`{text}` still ran after {COMMAND_DEADLINE} s:\n{tail(output)}")
        if process.returncode != 0:
            raise WalkFailed(f"`{text}` exited {process.returncode}{needs(output)}\n"
                             f"{tail(output)}{self.terminal_logs()}")
        last = (output.strip().splitlines() or [""])[-1]
        self.say(f"ran: {text} ({time.monotonic() - began:.1f} s): {last.strip()[:120]}")

    def start_terminal(self, text):
        log_path = self.tmp / f"terminal-{len(self.terminals) + 1}.log"
        with open(log_path, "wb") as log:
            # bash execs a lone command, so the SIGTERM at the end reaches the program itself.
            process = subprocess.Popen(["bash", "-c", text], cwd=self.clone, env=self.env(),
                                       stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        process.command, process.log_path = text, log_path
        self.terminals.append(process)
        ready = next((rule for words, rule in READY if words in text), None)
        if ready is None:
            raise WalkFailed(f"`{text}`: the walk does not know when this terminal is ready "
                             f"(add it to READY)")
        give_up = time.monotonic() + READY_DEADLINE
        while not ready(text, log_path.read_text(errors="replace")):
            if process.poll() is not None or time.monotonic() > give_up:
                output = log_path.read_text(errors="replace")
                state = (f"exited {process.returncode}" if process.poll() is not None
                         else f"not ready after {READY_DEADLINE} s")
                raise WalkFailed(f"terminal `{text}` {state}{needs(output)}\n{tail(output)}")
            time.sleep(0.2)
        self.say(f"terminal: {text} (ready)")

    def start_service(self, service):
        self.services[service] = subprocess.Popen(
            SERVICE_COMMANDS[service], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            cwd=self.tmp,
        )
        wait(lambda: port_answers(SERVICE_PORTS[service]), READY_DEADLINE, f"{service} started")
        self.say(f"service: {service}, which the prose told the reader to run")

    def terminal_logs(self):
        return "".join(f"\n--- terminal `{p.command}`:\n{tail(p.log_path.read_text())}"
                       for p in self.terminals)

    def stop(self):
        stop_all(self.terminals, STOP_DEADLINE)
        for process in self.services.values():
            process.terminate()
            process.wait(STOP_DEADLINE)


def says(text, words):
    """Where TEXT says WORDS, whatever the line breaks between them; or None."""
    return re.search(r"\s+".join(map(re.escape, words.split())), text)


def wait(condition, deadline, what):
    try:
        return poll_until(condition, deadline, what, interval=0.2)
    except TimeoutError as error:
        raise WalkFailed(str(error)) from None


def tail(text, lines=25):
    return "\n".join(text.splitlines()[-lines:])


# What a failed command's output says it needed, in a line.
NEEDS = [
    (r"No module named '?([\w.]+)'?",
     "needs the module {0}, which nothing the reader was told to install provides"),
    (r"(?:Error 111 connecting to|Connection refused.*?)(?:127\.0\.0\.1|localhost):6379",
     "needs Redis, which the prose has not told the reader to run"),
    (r"(?:127\.0\.0\.1|localhost):5672.*(?:refused|111)",
     "needs RabbitMQ, which the prose has not told the reader to run"),
    (r"bash: .*?(\S+): command not found", "needs the program {0}, which nothing installs"),
]


def needs(output):
    for pattern, message in NEEDS:
        found = re.search(pattern, output)
        if found:
            return ": " + message.format(*found.groups())
    return ""


# -- the prose's claims, checked on the spans -------------------------------------------


def spans_in(walk, want, what):
    """The spans in the clone's spans.db once WANT(spans) holds."""
    db = walk.clone / "spans.db"
    found = []

    def arrived():
        found[:] = sorted(load(str(db)), key=lambda span: span["start_ns"]) if db.exists() else []
        return want(found)

    try:
        wait(arrived, CLAIM_DEADLINE, what)
    except WalkFailed as failed:
        where = "" if db.exists() else " (no trace receiver wrote spans.db)"
        raise WalkFailed(f"{failed}{where}; spans: {sorted(s['name'] for s in found)}"
                         f"{walk.terminal_logs()}") from None
    return found


def broker_left(walk):
    folder = walk.tmp / "celery-broker"
    return sorted(p.name for p in folder.glob("*.msg")) if folder.exists() else []


def the_articles_handler_leaves_the_worker_orphaned(walk):
    """the request's trace holds the injected publish, the worker's spans start a trace of
    their own, the email task ran too and no message is left in the broker"""
    spans = spans_in(walk, lambda s: {REQUEST, PUBLISH, RUN, EMAIL_RUN, "render_email"}
                     <= names(s) and complete(s), "the order's spans, through both tasks")
    assert_edges(spans, [(REQUEST, PUBLISH)])
    assert_orphaned(spans, RUN)
    assert not broker_left(walk), f"messages left in the broker: {broker_left(walk)}"


def one_trace_from_the_request_through_both_workers(walk):
    """one trace, parent by parent, from POST /orders through the orders and email tasks"""
    spans = spans_in(walk, lambda s: {REQUEST, EMAIL_RUN, "render_email"} <= names(s)
                     and complete(s), "the order's spans, through both tasks")
    assert_edges(spans, CONNECTED_EDGES)
    assert len({s["trace_id"] for s in spans}) == 1
    assert not broker_left(walk), f"messages left in the broker: {broker_left(walk)}"


SCHEDULED_CHECK = "python doctor.py traces.jsonl --since 15m --settle 0s --max-orphan-ratio 0.001"
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def the_check_prints_the_line_the_readme_shows(walk):
    """the scheduled check's first line is the one the README shows, times aside"""
    text = walk.part.path.read_text()
    after = text[text.index(SCHEDULED_CHECK):]
    shown = after[after.index("```\n") + 4:].splitlines()[0]
    printed = (walk.tmp / "command.log").read_text().splitlines()[0]
    assert RFC3339.sub("<time>", printed) == RFC3339.sub("<time>", shown), printed


DJANGO_TASK = "orders_site.tasks.process_order"


def one_trace_from_the_django_view_through_the_worker(walk):
    """one trace, parent by parent, from Django's POST orders/ through the worker's task"""
    edges = [("POST orders/", f"celery.apply {DJANGO_TASK}"),
             (f"celery.apply {DJANGO_TASK}", f"celery.run {DJANGO_TASK}"),
             (f"celery.run {DJANGO_TASK}", "charge_payment"),
             (f"celery.run {DJANGO_TASK}", "send_confirmation")]
    spans = spans_in(walk, lambda s: {child for _, child in edges} <= names(s) and complete(s),
                     "the Django request's spans, through the worker")
    assert_edges(spans, edges)


POST_ORDER = ("curl -X POST localhost:5000/orders -H 'Content-Type: application/json' "
              "-d '{\"item\": \"book\", \"quantity\": 1}'")
CLAIMS = {
    ("02-why-headers-never-arrive.md", POST_ORDER):
        the_articles_handler_leaves_the_worker_orphaned,
    ("06-prove-it-in-your-app.md", POST_ORDER): one_trace_from_the_request_through_both_workers,
    ("07-your-framework.md", "curl -X POST localhost:8000/orders/"):
        one_trace_from_the_django_view_through_the_worker,
    ("README.md", SCHEDULED_CHECK): the_check_prints_the_line_the_readme_shows,
}


def main(part_number, clone, venv_folder):
    part = reading_order()[int(part_number)]
    installed = installed_before(reading_order(), int(part_number))
    walk = Walk(part, clone, lambda files: venvs.location(
        venv_folder, "reader", [ROOT / name for name in files]))
    try:
        walk.run(installed)
    except (WalkFailed, AssertionError) as failed:
        print("\n".join(walk.report))
        print(f"FAILED in {part.name}: {failed}")
        return 1
    print("\n".join(walk.report))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
