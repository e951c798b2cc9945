"""HTML pieces of the operators' console in the Django admin (``flows.admin``, ``jobs.admin``).

Status badges, progress bars, folded JSON and the job tree of a flow page are built
here in Python with ``format_html``: a 2,000-job tree renders in a fraction of the
time a recursive ``{% include %}`` takes. Everything is escaped; no status, event
name or colour is spelled in the templates or the script (``console.js`` reads them
from ``console_config``).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from jobs.vocabulary import (
    FINAL_FLOW_STATUSES,
    ClientAction,
    ClientEvent,
    FlowEvent,
    FlowStatus,
    JobStatus,
)

# Badge colours, keyed by the vocabulary's statuses (jobs and flows share the words they share).
STATUS_COLOURS: dict[str, str] = {
    JobStatus.WAITING: "#607d8b",
    JobStatus.WAITING_CHILDREN: "#7e57c2",
    JobStatus.DELAYED: "#f9a825",
    JobStatus.ACTIVE: "#1e88e5",
    JobStatus.COMPLETED: "#2e7d32",
    JobStatus.FAILED: "#c62828",
    JobStatus.PAUSED: "#8d6e63",
    JobStatus.STUCK: "#ef6c00",
    JobStatus.CANCELLED: "#424242",
    FlowStatus.PENDING: "#607d8b",
    FlowStatus.RUNNING: "#1e88e5",
}
# JSON longer than this (compact) is folded behind a <details> on the flow page.
FOLD_CHARS = 120
# Log lines shown per job on the flow page (the latest ones).
LOG_LINES_PER_JOB = 50
WEBSOCKET_PATH = "/ws/flows/"


def status_badge(status: str, *, flow_id: str | None = None) -> SafeString:
    """A coloured badge; ``flow_id`` marks it for live updates on the flow list."""
    colour = STATUS_COLOURS.get(status, "#757575")
    marker = format_html(' data-flow-status="{}"', flow_id) if flow_id else ""
    return format_html(
        '<span class="fs-badge" data-status="{}"{} style="background:{}">{}</span>', status, marker, colour, status
    )


def progress_bar(progress: dict[str, Any], *, flow_id: str | None = None) -> SafeString:
    """A bar of completed/total jobs (failed jobs in red), with the figures beside it."""
    total = progress.get("total", 0)
    completed, failed = progress.get("completed", 0), progress.get("failed", 0)
    done = round(100 * completed / total, 1) if total else 0
    bad = round(100 * failed / total, 1) if total else 0
    marker = format_html(' data-flow-progress="{}"', flow_id) if flow_id else ""
    return format_html(
        '<span class="fs-progress"{}><span class="fs-bar"><span class="fs-bar-done" style="width:{}%"></span>'
        '<span class="fs-bar-failed" style="width:{}%"></span></span>'
        '<span class="fs-bar-text">{}/{}</span></span>',
        marker, done, bad, completed, total,
    )


def duration(start: datetime | None, end: datetime | None) -> str:
    """``1.2 s``, ``3 min 4 s``...; running (no end): until now. Empty if it never started."""
    if start is None:
        return ""
    seconds = ((end or timezone.now()) - start).total_seconds()
    return format_seconds(seconds)


def format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def json_block(label: str, value: Any, *, css: str = "") -> SafeString:
    """Read-only JSON: inline when short, folded (``<details>``) and pretty when long."""
    compact = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    if len(compact) <= FOLD_CHARS:
        return format_html('<div class="fs-kv {}"><b>{}</b> <code>{}</code></div>', css, label, compact)
    pretty = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    return format_html(
        '<details class="fs-kv {}"><summary><b>{}</b> <code>{}…</code> ({} characters)</summary><pre>{}</pre></details>',
        css, label, compact[:FOLD_CHARS // 2], len(compact), pretty,
    )


def text_block(label: str, text: str, *, css: str = "") -> SafeString:
    """Plain text (an error, a stack trace): folded when long or on several lines."""
    if len(text) <= FOLD_CHARS and "\n" not in text:
        return format_html('<div class="fs-kv {}"><b>{}</b> <span>{}</span></div>', css, label, text)
    first = text.splitlines()[0][: FOLD_CHARS // 2] if text else ""
    return format_html(
        '<details class="fs-kv {}"><summary><b>{}</b> <span>{}…</span></summary><pre>{}</pre></details>',
        css, label, first, text,
    )


# THE JOB TREE
# ------------------------------------------------------------------------------


def job_tree_html(roots: list[dict[str, Any]], logs: dict[str, list[dict[str, Any]]]) -> SafeString:
    """The flow's jobs as nested, collapsible lists (parents above their children).

    ``roots`` come from ``flows.selectors.flow_jobs_tree`` with ``CONSOLE_TREE_FIELDS``;
    ``logs`` from ``flow_job_logs``. Iterative, so a depth-100 flow needs no recursion.
    """
    parts: list[str] = ['<ul class="fs-tree">']
    # A stack of (job, children left) pairs; a closing marker is None.
    stack: list[dict[str, Any] | None] = list(reversed(roots))
    while stack:
        job = stack.pop()
        if job is None:
            parts.append("</ul></details></li>")
            continue
        children = job["children"]
        line = _job_line(job)
        body = _job_body(job, logs.get(job["id"], []))
        if children:
            parts.append(
                format_html(
                    '<li class="fs-job" data-job-id="{}"><details open><summary>{}</summary>{}<ul>',
                    job["id"], line, body,
                )
            )
            stack.append(None)
            stack.extend(reversed(children))
        else:
            parts.append(format_html('<li class="fs-job" data-job-id="{}">{}{}</li>', job["id"], line, body))
    parts.append("</ul>")
    return mark_safe("".join(parts))  # every part above is format_html output


def _job_line(job: dict[str, Any]) -> SafeString:
    progress = job["progress"]
    return format_html(
        '<span class="fs-line">{} <b class="fs-name">{}</b> <code class="fs-id" title="{}">{}</code> '
        '<span class="fs-meta">queue <b>{}</b> · attempts <span class="fs-attempts">{}/{}</span> · '
        '<span class="fs-duration">{}</span><span class="fs-job-progress">{}</span></span></span>',
        status_badge(job["status"]), job["name"], job["id"], job["id"][:8], job["queue_name"],
        job["attempts_made"], job["max_attempts"], duration(job["started_at"], job["finished_at"]),
        f" · progress {json.dumps(progress)}" if progress else "",
    )


def _job_body(job: dict[str, Any], logs: list[dict[str, Any]]) -> SafeString:
    parts = [json_block("data", job["data"])]
    if job["result"] is not None:
        parts.append(json_block("result", job["result"], css="fs-result"))
    if job["error"]:
        label = f"error ({job['error_type']})" if job["error_type"] else "error"
        parts.append(text_block(label, job["error"], css="fs-error"))
    if logs:
        lines = format_html_join(
            "\n", "{} {}", ((row["created_at"].strftime("%H:%M:%S.%f")[:-3], row["message"]) for row in logs)
        )
        parts.append(format_html('<details class="fs-kv"><summary><b>log</b> ({} lines)</summary><pre>{}</pre></details>', len(logs), lines))
    return format_html('<div class="fs-body">{}</div>', mark_safe("".join(parts)))


# THE SCRIPT'S CONFIGURATION
# ------------------------------------------------------------------------------


def console_config(*, flow_id: str | None = None) -> dict[str, Any]:
    """What ``console.js`` needs, from the vocabulary: no word of the contract is spelled in it."""
    return {
        "wsPath": WEBSOCKET_PATH + (f"{flow_id}/" if flow_id else ""),
        "flowId": flow_id,
        "events": {member.name: member.value for member in FlowEvent},
        "clientEvents": {member.name: member.value for member in ClientEvent},
        "actions": {member.name: member.value for member in ClientAction},
        "colours": STATUS_COLOURS,
        "finalFlowStatuses": sorted(FINAL_FLOW_STATUSES),
        "finalEvents": {
            FlowEvent.COMPLETED: FlowStatus.COMPLETED, FlowEvent.FAILED: FlowStatus.FAILED,
            FlowEvent.CANCELLED: FlowStatus.CANCELLED,
        },
        "jobUrl": reverse("admin:jobs_job_change", args=["JOB_ID"]),
    }


# THE DASHBOARD (the admin index)
# ------------------------------------------------------------------------------


def dashboard_context(*, user: Any) -> dict[str, Any]:
    """The figures of ``GET /api/dashboard``, from the same selectors, for what the user may view."""
    from flows.selectors import flow_status_counts, flows_created_per_hour
    from jobs.selectors import latest_failures, queue_health, queue_status_counts

    context: dict[str, Any] = {"dashboard": False}
    if user.has_perm("flows.view_flow"):
        flows = flow_status_counts(user=user)
        hours = flows_created_per_hour(user=user)
        context.update(
            dashboard=True,
            flow_counts=[(status_badge(status), count) for status, count in flows.items()],
            flows_per_hour=hourly_chart_svg(hours),
            flows_last_24h=sum(slot["count"] for slot in hours),
        )
    if user.has_perm("jobs.view_job"):
        queues = queue_status_counts(user=user)
        health = queue_health()
        context.update(
            dashboard=True,
            job_statuses=[status_badge(status) for status in JobStatus.values],
            queue_rows=[
                {"name": name, "counts": [counts[status] for status in JobStatus.values], **health[name]}
                for name, counts in queues.items()
            ],
            latest_failures=latest_failures(user=user),
        )
    return context


CHART_WIDTH, CHART_HEIGHT, CHART_LABEL = 480, 120, 16


def hourly_chart_svg(slots: list[dict[str, Any]]) -> SafeString:
    """A small inline SVG bar chart of ``[{"hour", "count"}]`` (no script, no external asset)."""
    peak = max((slot["count"] for slot in slots), default=0) or 1
    step = CHART_WIDTH / max(len(slots), 1)
    plot = CHART_HEIGHT - CHART_LABEL
    bars = []
    for index, slot in enumerate(slots):
        height = round(plot * slot["count"] / peak, 1)
        label = f"{slot['hour']:%H}:00 UTC: {slot['count']} flows"
        bars.append(format_html(
            '<rect x="{}" y="{}" width="{}" height="{}" fill="#1e88e5"><title>{}</title></rect>',
            round(index * step + 1, 1), round(plot - height, 1), round(step - 2, 1), height, label,
        ))
        if index % 6 == 0:
            bars.append(format_html(
                '<text x="{}" y="{}" font-size="10" fill="#666">{}</text>',
                round(index * step + 1, 1), CHART_HEIGHT - 3, f"{slot['hour']:%H}:00",
            ))
    return format_html(
        '<svg class="fs-chart" viewBox="0 0 {} {}" width="{}" height="{}" role="img" aria-label="{}">'
        '<line x1="0" y1="{}" x2="{}" y2="{}" stroke="#ccc"/>{}</svg>',
        CHART_WIDTH, CHART_HEIGHT, CHART_WIDTH, CHART_HEIGHT, "Flows created per hour, last 24 hours",
        plot, CHART_WIDTH, plot, mark_safe("".join(bars)),
    )
