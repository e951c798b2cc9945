"""Submit a flow from a JSON file and, with --wait, follow it to the end."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from flows.models import Flow
from flows.services import flow_create
from jobs.exceptions import SpecValidationError
from jobs.models import Job
from jobs.vocabulary import FINAL_FLOW_STATUSES, FlowStatus, JobStatus

EXIT_INVALID = 2
EXIT_TIMEOUT = 3


class Command(BaseCommand):
    help = (
        "Create a flow from FILE.json ('-' for stdin) and print its id. With --wait, print every "
        "job transition until the flow finishes, then its status and result; exit 0 if it "
        "completed, 1 if it failed or was cancelled, 2 for invalid input, 3 on --timeout."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("file")
        parser.add_argument("--owner", default="admin", help="Username that owns the flow (default: admin).")
        parser.add_argument("--wait", action="store_true", help="Follow the flow until it finishes.")
        parser.add_argument("--timeout", type=float, default=None, help="Give up waiting after this many seconds.")
        parser.add_argument(
            "--no-worker",
            action="store_true",
            help="In embedded mode, do not run a worker in this process (rely on a running server's).",
        )

    def handle(self, *args, file: str, owner: str, wait: bool, timeout: float | None, no_worker: bool, **options):
        spec = self._read_spec(file)
        user = get_user_model().objects.filter(username=owner).first()
        if user is None:
            raise CommandError(f"User {owner!r} does not exist. Create it, or pass --owner USERNAME.")
        worker = None
        if wait and settings.EMBEDDED and not no_worker:
            from flowsite.embedded import start_embedded_worker

            worker = start_embedded_worker()
        try:
            try:
                flow = flow_create(owner=user, spec=spec)
            except SpecValidationError as exc:
                self.stderr.write(exc.message)
                for path, messages in exc.details.items():
                    for message in messages:
                        self.stderr.write(f"  {path}: {message}")
                raise CommandError("The flow was not created.", returncode=EXIT_INVALID) from None
            self.stdout.write(flow.id)
            self.stdout.flush()
            if flow.published is False:
                self.stderr.write(self.style.WARNING(
                    f"Warning: flow {flow.id} is saved, but the broker could not be reached to publish its jobs. "
                    f"They will be published by the sweep (within about {settings.FLOWSITE_REDISPATCH_AFTER} s "
                    "once the broker is back, if celery beat and a worker are running)."
                ))
            if not wait:
                return
            flow = self._follow(flow, timeout)
        finally:
            if worker is not None:
                worker.stop()
        self._report(flow)
        if flow.status != FlowStatus.COMPLETED:
            sys.exit(1)

    def _read_spec(self, file: str) -> Any:
        try:
            text = sys.stdin.read() if file == "-" else open(file, encoding="utf-8").read()
        except OSError as exc:
            raise CommandError(f"Cannot read {file}: {exc.strerror}", returncode=EXIT_INVALID) from None
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise CommandError(
                f"{file} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}",
                returncode=EXIT_INVALID,
            ) from None

    def _follow(self, flow: Flow, timeout: float | None) -> Flow:
        """Poll the job rows and print each status change until the flow is final."""
        seen: dict[str, tuple[str, int]] = {}
        deadline = None if timeout is None else time.monotonic() + timeout
        started = time.monotonic()
        while True:
            flow.refresh_from_db()
            rows = Job.objects.filter(flow_id=flow.pk).values_list("id", "name", "status", "attempts_made", "error")
            for job_id, name, status, attempts, error in rows:
                before = seen.get(job_id)
                if before == (status, attempts):
                    continue
                seen[job_id] = (status, attempts)
                arrow = f"{before[0]} -> {status}" if before else status
                if before and attempts > before[1] and JobStatus.ACTIVE not in (status, before[0]):
                    # It ran between two polls: a job only finishes through ``active``.
                    arrow = f"{before[0]} -> {JobStatus.ACTIVE} -> {status}"
                line = f"{time.monotonic() - started:8.2f}s  {name} ({job_id[:8]})  {arrow}"
                if attempts > 1 and status == JobStatus.ACTIVE:
                    line += f" (attempt {attempts})"
                if error and status in (JobStatus.FAILED, JobStatus.DELAYED):
                    line += f"  {error}"
                self.stdout.write(line)
            if flow.status in FINAL_FLOW_STATUSES:
                return flow
            if deadline is not None and time.monotonic() > deadline:
                raise CommandError(
                    f"Flow {flow.pk} is still {flow.status} after {timeout:g}s.", returncode=EXIT_TIMEOUT
                )
            time.sleep(0.05)

    def _report(self, flow: Flow) -> None:
        took = ""
        if flow.completed_at and flow.created_at:
            took = f" in {(flow.completed_at - flow.created_at).total_seconds():.2f}s"
        style = self.style.SUCCESS if flow.status == FlowStatus.COMPLETED else self.style.ERROR
        self.stdout.write(style(f"Flow {flow.pk} {flow.status}{took}"))
        if flow.status == FlowStatus.COMPLETED:
            self.stdout.write("Result: " + json.dumps(flow.result, indent=2))
        elif flow.error:
            self.stdout.write(f"Error: {flow.error}")
