"""Start the whole system: migrations, an admin user (embedded mode), the worker or the sweeps, and the web server."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from jobs.queues import external_queues, worked_queues

# Embedded mode only: the generated admin password, readable by the local user alone (0600),
# for whoever missed it in the first start's output. Removed once the password is changed.
ADMIN_PASSWORD_FILE = "admin-password"
# Threads of the webhook worker ``up`` starts: deliveries in flight at once.
WEBHOOK_WORKER_THREADS = 8
# How long a stop waits for open requests before cancelling them.
GRACEFUL_SHUTDOWN_SECONDS = 5


class Command(BaseCommand):
    help = (
        "Run Flowsite: apply migrations, in embedded mode create the admin user if missing (its "
        "password is printed once) and start the embedded worker, in service mode start Celery beat "
        "for the sweeps (create users with `manage.py createsuperuser`), and serve on HOST:PORT."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument(
            "--admin-user", default="admin",
            help="Embedded mode: username of the admin to create if missing (service mode creates no user).",
        )
        parser.add_argument(
            "--no-worker", action="store_true", help="Do not run a worker in this process."
        )
        parser.add_argument(
            "--no-beat", action="store_true",
            help="Service mode: do not start Celery beat, which schedules the sweeps that recover lost jobs "
            "(run `celery -A flowsite beat` elsewhere).",
        )
        parser.add_argument(
            "--no-webhook-worker", action="store_true",
            help="Service mode: do not start the Celery worker that sends webhook deliveries "
            "(run `celery -A flowsite worker -Q webhooks -P threads` elsewhere).",
        )
        parser.add_argument(
            "--workers", type=int, default=None, metavar="N",
            help="Web server processes (service mode only; default: WEB_CONCURRENCY, or twice the CPU count).",
        )

    def handle(
        self, *args, host: str, port: int, admin_user: str, no_worker: bool, no_beat: bool, workers: int | None,
        no_webhook_worker: bool = False, **options,
    ) -> None:
        import uvicorn
        from rest_framework.settings import api_settings

        if workers is not None and workers < 1:
            raise CommandError("--workers must be at least 1.")
        if settings.EMBEDDED:
            if workers not in (None, 1):
                raise CommandError(
                    "Embedded mode serves from one process (the worker runs inside it); "
                    "set DATABASE_URL and REDIS_URL to run several web processes."
                )
            workers = 1
        else:
            workers = workers or settings.WEB_CONCURRENCY
        call_command("migrate", interactive=False, verbosity=0)
        if settings.EMBEDDED:
            self._ensure_admin(admin_user)
        else:
            self._mention_createsuperuser()
        worker = None
        if settings.EMBEDDED and not no_worker:
            from flowsite.embedded import start_embedded_worker
            from jobs.services import jobs_requeue_interrupted

            requeued = jobs_requeue_interrupted()
            if requeued:
                self.stdout.write(f"Re-queued {requeued} job(s) interrupted by the last shutdown.")
            worker = start_embedded_worker()
            self.stdout.write(f"Worker running in-process on queues: {', '.join(worked_queues())}")
        if external_queues():
            self.stdout.write(f"External queues (jobs reported through the API): {', '.join(external_queues())}")
        beat = None
        if not settings.EMBEDDED and not no_beat:
            beat = self._start_beat()
        hooks = None
        if not settings.EMBEDDED and not no_webhook_worker:
            hooks = self._start_webhook_worker()
        mode = "embedded (SQLite, on-disk broker)" if settings.EMBEDDED else "service (PostgreSQL/Redis)"
        processes = f", {workers} web processes" if workers > 1 else ""
        self.stdout.write(
            self.style.SUCCESS(f"Flowsite ({mode}{processes}) at http://{host}:{port}/admin/"), ending="\n"
        )
        self.stdout.flush()
        try:
            # No access log: request lines carry query strings, such as a websocket's ?token=.
            # A stop waits for requests in flight, but not for Socket.IO long-polls (held up
            # to 45 s): their clients reconnect.
            uvicorn.run(
                "flowsite.asgi:application", host=host, port=port, workers=workers,
                log_level="warning", access_log=False, lifespan="off",
                # Event frames are small: compressing each one for each client cost more
                # CPU than it saved (bench/events.py).
                ws_per_message_deflate=False,
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
                # The client's address is the connection's unless NUM_PROXIES trusts proxies
                # (the token throttle, the admin login lockout). uvicorn would otherwise take
                # X-Forwarded-For from any client on 127.0.0.1 as the address.
                proxy_headers=api_settings.NUM_PROXIES > 0,
            )
        finally:
            if worker is not None:
                worker.stop()
            for process in (beat, hooks):
                if process is None:
                    continue
                process.terminate()
                try:
                    process.wait(GRACEFUL_SHUTDOWN_SECONDS)
                except subprocess.TimeoutExpired:
                    process.kill()

    def _start_beat(self) -> subprocess.Popen:
        """Celery beat, which sends the sweeps (``jobs.sweeps``) every ``FLOWSITE_SWEEP_INTERVAL``.

        Several ``up`` processes each start one: harmless, only one sweep runs at a time.
        """
        schedule = settings.DATA_DIR / "celerybeat-schedule"
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "flowsite", "beat", "--loglevel", "warning", "--schedule",
             str(schedule)],
        )
        self.stdout.write(f"Celery beat running (pid {process.pid}): sweeps every {settings.FLOWSITE_SWEEP_INTERVAL} s")
        return process

    def _start_webhook_worker(self) -> subprocess.Popen:
        """A Celery worker for the webhooks queue only, in threads (sending is waiting on the network).

        Apart from the job workers, so a slow target never holds up a job. Several ``up``
        processes each start one: deliveries are claimed one at a time.
        """
        from jobs.vocabulary import WEBHOOK_QUEUE

        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "flowsite", "worker", "-Q", WEBHOOK_QUEUE, "-P", "threads",
             "-c", str(WEBHOOK_WORKER_THREADS), "-n", f"webhooks-{os.getpid()}@%h", "--loglevel", "warning",
             "--without-mingle", "--without-gossip"],
        )
        self.stdout.write(f"Webhook worker running (pid {process.pid}) on queue {WEBHOOK_QUEUE}")
        return process

    def _ensure_admin(self, username: str) -> None:
        """Embedded mode: create the admin if missing and print its password, once.

        The password is also kept in ``FLOWSITE_DATA_DIR/admin-password`` (0600) for the
        local user; later starts say where it is, and drop the file once it no longer
        holds the password (changed in the admin or with ``changepassword``).
        """
        user_model = get_user_model()
        password_file = settings.DATA_DIR / ADMIN_PASSWORD_FILE
        user = user_model.objects.filter(username=username).first()
        if user is None:
            password = secrets.token_urlsafe(12)
            user_model.objects.create_superuser(username=username, email="", password=password)
            settings.DATA_DIR.mkdir(parents=True, exist_ok=True)
            password_file.touch(mode=0o600)
            password_file.chmod(0o600)
            password_file.write_text(password)
            self.stdout.write(self.style.SUCCESS(f"Created admin user {username!r} with password {password!r}"))
            self.stdout.write(f"(printed this once; it is also in {password_file}, readable by you only)")
        elif password_file.exists() and user.check_password(password_file.read_text().strip()):
            self.stdout.write(f"Admin user {username!r}: its password is in {password_file}")
        else:
            password_file.unlink(missing_ok=True)
            self.stdout.write(f"Admin user {username!r} exists (password unchanged).")

    def _mention_createsuperuser(self) -> None:
        """Service mode creates no user: its logs must not carry a password."""
        if not get_user_model().objects.filter(is_superuser=True).exists():
            self.stdout.write(
                "No superuser yet: create one with `python manage.py createsuperuser` (the admin is at /admin/)."
            )
