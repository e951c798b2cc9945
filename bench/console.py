"""The operators' console: how long the admin's pages take, a 2,000-job flow page above all.

    .venv/bin/python bench/console.py [--requests 20]

Starts the server as deployed (``manage.py up --no-worker``) on a dedicated PostgreSQL
database, seeds 100 small flows and one flow of a root and 2,000 children (half of
them completed with a result and two log lines each, one failed), logs into the admin
as an operator would (the login form, a session cookie), then fetches each page
``--requests`` times, one after the other. Prints p50/p95/max per page and the page size.
Jobs are not executed (no workers): the console's own cost is what is measured.
"""

from __future__ import annotations

import argparse
import http.cookiejar
import re
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.api import DB_NAME as _API_DB, env as _api_env  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DB_NAME = "flowsite_bench_console"
PORT = 8766
PASSWORD = "bench-console-pw"

SEED = f"""
from django.contrib.auth.models import User
from flows.services import flow_create
from jobs.models import Job, JobLog
from jobs.vocabulary import JobStatus
user = User.objects.create_superuser('operator', 'op@example.com', {PASSWORD!r})
spec = lambda n: {{'flowname': 'bench', 'name': 'download-video', 'queueName': 'default',
                   'children': [{{'name': 'download-video', 'queueName': 'default', 'data': {{'n': i}}}} for i in range(n)]}}
for _ in range(100):
    flow_create(owner=user, spec=spec(5))
big = flow_create(owner=user, spec=spec(2000))
children = list(Job.objects.filter(flow=big, parent__isnull=False).order_by('position').values_list('id', flat=True))
done = children[: len(children) // 2]
Job.objects.filter(pk__in=done).update(status=JobStatus.COMPLETED, result={{'filePath': '/tmp/out.mp4', 'size': 1234}}, attempts_made=1)
Job.objects.filter(pk=children[-1]).update(status=JobStatus.FAILED, error='boom', error_type='ValueError', attempts_made=1)
JobLog.objects.bulk_create([JobLog(job_id=job_id, message=f'line {{n}}') for job_id in done for n in range(2)])
print(big.id)
"""


def env() -> dict[str, str]:
    return {**_api_env(), "DATABASE_URL": _api_env()["DATABASE_URL"].replace(_API_DB, DB_NAME)}


def manage(*args: str, stdin: str | None = None) -> str:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env(), check=True, capture_output=True, text=True,
        input=stdin,
    ).stdout


def prepare() -> str:
    for sql in (f"DROP DATABASE IF EXISTS {DB_NAME}", f"CREATE DATABASE {DB_NAME}"):
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", sql], check=True)
    manage("migrate", "-v0")
    return manage("shell", stdin=SEED).strip().splitlines()[-1]


def login(base: str) -> urllib.request.OpenerDirector:
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(f"{base}/admin/login/").read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    form = urllib.parse.urlencode({"username": "operator", "password": PASSWORD, "csrfmiddlewaretoken": token,
                                   "next": "/admin/"}).encode()
    request = urllib.request.Request(f"{base}/admin/login/", data=form, headers={"Referer": f"{base}/admin/login/"})
    assert 'id="fs-dashboard"' in opener.open(request).read().decode(), "login failed"
    return opener


def measure(opener: urllib.request.OpenerDirector, url: str, requests: int) -> tuple[list[float], int]:
    opener.open(url).read()  # warm up
    times, size = [], 0
    for _ in range(requests):
        start = time.perf_counter()
        size = len(opener.open(url).read())
        times.append((time.perf_counter() - start) * 1000)
    return times, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    big = prepare()
    base = f"http://127.0.0.1:{PORT}"
    server = subprocess.Popen(
        [sys.executable, "manage.py", "up", "--no-worker", "--no-beat", "--workers", "1", "--port", str(PORT)],
        cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        opener = login(base)
        pages = {
            "flow page, 2,001 jobs": f"{base}/admin/flows/flow/{big}/change/",
            "flow list (100 per page)": f"{base}/admin/flows/flow/",
            "job list (100 per page)": f"{base}/admin/jobs/job/",
            "queues": f"{base}/admin/jobs/queuestate/",
            "dashboard (admin index)": f"{base}/admin/",
        }
        print(f"{'page':<28} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'size':>9}")
        for name, url in pages.items():
            times, size = measure(opener, url, args.requests)
            p95 = statistics.quantiles(times, n=20, method="inclusive")[-1] if len(times) >= 2 else times[0]
            print(f"{name:<28} {statistics.median(times):>8.0f} {p95:>8.0f} {max(times):>8.0f} {size / 1e3:>7.0f} kB")
    finally:
        server.terminate()
        server.wait(15)


if __name__ == "__main__":
    main()
