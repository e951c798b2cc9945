"""Jobs and queues in the operators' console.

Every field of a job is the engine's, so the job page is read-only; cancel, retry and
delete call the services of the API (``jobs.services``, ``flows.services``). The queue
page lists the configured queues with the dashboard's figures, and pauses and resumes them.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.views.decorators.http import require_POST

from flows import console
from flows.services import flow_retry
from jobs import registry, selectors, services
from jobs.exceptions import InvalidTransition
from jobs.models import Job, JobLog, QueueState
from jobs.vocabulary import JobStatus


class QueueFilter(admin.SimpleListFilter):
    """The configured queues (``FLOWSITE_QUEUES``): no scan of the table for its distinct values."""

    title = "queue"
    parameter_name = "queue"

    def lookups(self, request, model_admin):
        return [(name, name) for name in settings.FLOWSITE_QUEUES]

    def queryset(self, request, queryset):
        return queryset.filter(queue_name=self.value()) if self.value() else queryset


class FlowIdFilter(admin.ListFilter):
    """Jobs of one flow, by its id typed in a box (a list of every flow would not fit)."""

    title = "flow"
    parameter_name = "flow"
    template = "admin/console/input_filter.html"

    def __init__(self, request, params, model, model_admin):
        super().__init__(request, params, model, model_admin)
        value = params.pop(self.parameter_name, None)
        self.value = (value[-1] if isinstance(value, list) else value) or ""
        if self.value:
            self.used_parameters[self.parameter_name] = self.value

    def has_output(self) -> bool:
        return True

    def queryset(self, request, queryset):
        return queryset.filter(flow_id=self.value) if self.value else queryset

    def expected_parameters(self) -> list[str]:
        return [self.parameter_name]

    def choices(self, changelist):
        # The template's form keeps the other filters as hidden fields.
        others = [
            (key, value) for key, values in changelist.get_filters_params().items() if key != self.parameter_name
            for value in (values if isinstance(values, list) else [values])
        ]
        yield {"value": self.value, "parameter_name": self.parameter_name, "others": others,
               "clear_url": changelist.get_query_string(remove=[self.parameter_name])}


class HandlerFilter(admin.SimpleListFilter):
    """The registered handler names (``jobs.registry``): no scan of the table for its distinct values."""

    title = "handler"
    parameter_name = "handler"

    def lookups(self, request, model_admin):
        return [(name, name) for name in registry.handler_names()]

    def queryset(self, request, queryset):
        return queryset.filter(name=self.value()) if self.value() else queryset


class JobLogInline(admin.TabularInline):
    model = JobLog
    extra = 0
    fields = readonly_fields = ("created_at", "message")
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # log lines are written by handlers only


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("job_id", "name", "queue_name", "status_badge", "attempts", "flow_link", "created_at", "duration")
    list_display_links = ("job_id", "name")
    list_filter = ("status", QueueFilter, FlowIdFilter, HandlerFilter)
    search_fields = ("=id", "name")
    search_help_text = "A job id, or part of a handler name."
    sortable_by = ("name", "queue_name", "status_badge", "created_at")
    actions = ["cancel_jobs", "retry_jobs", "delete_selected"]
    inlines = [JobLogInline]
    fieldsets = (
        (None, {"fields": (("job_id", "name", "queue_name"), ("flow_link", "parent_link"), ("status_badge", "attempts", "progress"))}),
        ("Times", {"fields": (("created_at", "started_at", "finished_at", "duration"),)}),
        ("Input and outcome", {"fields": ("data_json", "opts_json", "failure_policy", "result_json", "error_text", "stacktrace_text")}),
        ("Engine", {"fields": (("pending_children", "child_count", "position", "worker_id"),), "classes": ("collapse",)}),
    )
    # Everything: status, attempts, counters, timestamps, result, error, parent and flow are the engine's.
    readonly_fields = (
        "job_id", "name", "queue_name", "flow_link", "parent_link", "status_badge", "attempts", "progress",
        "created_at", "started_at", "finished_at", "duration", "data_json", "opts_json", "failure_policy",
        "result_json", "error_text", "stacktrace_text", "pending_children", "child_count", "position", "worker_id",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Job]:
        return super().get_queryset(request).defer("stacktrace")

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        return lookup == FlowIdFilter.parameter_name or super().lookup_allowed(lookup, value, request)

    # COLUMNS AND FIELDS
    @admin.display(description="jobId", ordering="id")
    def job_id(self, job: Job) -> str:
        return job.pk

    @admin.display(description="status", ordering="status")
    def status_badge(self, job: Job):
        return console.status_badge(job.status)

    @admin.display(description="attempts")
    def attempts(self, job: Job) -> str:
        return f"{job.attempts_made}/{job.max_attempts}"

    @admin.display(description="flow")
    def flow_link(self, job: Job):
        # The id only: loading the flow rows (and their job structure) would cost a join per page.
        if not job.flow_id:
            return "-"
        return format_html('<a href="{}">{}</a>', reverse("admin:flows_flow_change", args=[job.flow_id]), job.flow_id)

    @admin.display(description="parent")
    def parent_link(self, job: Job):
        if not job.parent_id:
            return "-"
        return format_html('<a href="{}">{}</a>', reverse("admin:jobs_job_change", args=[job.parent_id]), job.parent_id)

    @admin.display(description="duration")
    def duration(self, job: Job) -> str:
        return console.duration(job.started_at, job.finished_at)

    @admin.display(description="data")
    def data_json(self, job: Job):
        return console.json_block("", job.data)

    @admin.display(description="opts")
    def opts_json(self, job: Job):
        return console.json_block("", job.opts)

    @admin.display(description="result")
    def result_json(self, job: Job):
        return console.json_block("", job.result)

    @admin.display(description="error")
    def error_text(self, job: Job):
        return console.text_block(job.error_type, job.error) if job.error else "-"

    @admin.display(description="stack trace")
    def stacktrace_text(self, job: Job):
        return console.text_block("", job.stacktrace) if job.stacktrace else "-"

    # PERMISSIONS
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # jobs are submitted through the API or by handlers

    def has_delete_permission(self, request: HttpRequest, obj: Job | None = None) -> bool:
        if obj is not None and _in_tree(obj):
            return False  # delete or cancel its flow instead
        return super().has_delete_permission(request, obj)

    def save_model(self, request, obj, form, change) -> None:
        """Write only what the form changed (nothing: every field is read-only), never the whole row."""
        if form.changed_data:
            Job.objects.filter(pk=obj.pk).update(**{name: getattr(obj, name) for name in form.changed_data})

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None):
        extra = {"show_save": False, "show_save_and_continue": False, "show_save_and_add_another": False}
        return super().change_view(request, object_id, form_url, {**extra, **(extra_context or {})})

    # ACTIONS (the services of the API's job routes)
    @admin.action(description="Cancel selected jobs", permissions=["change"])
    def cancel_jobs(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        changed, refused = 0, []
        for job in queryset:
            if services.job_cancel(job=job):
                changed += 1
            else:
                refused.append(f"{job.pk}: {job.status}")
        _report(self, request, changed, refused, done="Cancelled", verb="cancel")

    @admin.action(description="Retry selected failed jobs", permissions=["change"])
    def retry_jobs(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        changed, refused = 0, []
        for job in queryset:
            try:
                if job.flow_id:
                    flow_retry(flow=job.flow, job_id=job.pk)
                else:
                    services.job_retry_standalone(job=job)
                changed += 1
            except InvalidTransition:
                refused.append(f"{job.pk}: {job.status}")  # the job's own (the flow's is in the exception)
        _report(self, request, changed, refused, done="Retried", verb="retry")

    # DELETE (standalone and attached jobs only; ``jobs.services.job_delete``)
    def get_deleted_objects(self, objs, request):
        """Jobs of a flow's tree are protected; the others go with their log lines."""
        jobs = list(objs)
        tree = [job for job in jobs if _in_tree(job)]
        if tree:
            protected = [
                format_html("{} is part of flow {}'s tree: cancel or delete the flow instead", job.pk, job.flow_id)
                for job in tree
            ]
            return [], {}, set(), protected
        logs = JobLog.objects.filter(job__in=jobs).count()
        listed = [format_html('<a href="{}">{}</a>', reverse("admin:jobs_job_change", args=[job.pk]), str(job)) for job in jobs]
        return listed, {Job._meta.verbose_name_plural: len(jobs), JobLog._meta.verbose_name_plural: logs}, set(), []

    def delete_model(self, request: HttpRequest, obj: Job) -> None:
        services.job_delete(job=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        for job in queryset:
            services.job_delete(job=job)


def _in_tree(job: Job) -> bool:
    return bool(job.parent_id or job.child_count)


def _report(model_admin: admin.ModelAdmin, request: HttpRequest, changed: int, refused: list[str], *,
            done: str, verb: str) -> None:
    """Django messages: how many jobs changed, and which could not, with their status."""
    if changed:
        model_admin.message_user(request, f"{done} {changed} job{'s' if changed != 1 else ''}.", messages.SUCCESS)
    if refused:
        model_admin.message_user(
            request, f"Could not {verb} {len(refused)} job{'s' if len(refused) != 1 else ''}: {'; '.join(refused)}.",
            messages.WARNING,
        )


@admin.register(QueueState)
class QueueAdmin(admin.ModelAdmin):
    """The queue page: one row per configured queue, counts per status, health, pause and resume.

    Seeing it needs the view permission of queue states; pausing and resuming, the change permission.
    """

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        return [
            path("", self.admin_site.admin_view(self.changelist_view), name="%s_%s_changelist" % info),
            path("<str:name>/pause/", self.admin_site.admin_view(require_POST(self.pause_view)),
                 name="%s_%s_pause" % info),
            path("<str:name>/resume/", self.admin_site.admin_view(require_POST(self.resume_view)),
                 name="%s_%s_resume" % info),
        ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None):
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        counts = selectors.queue_status_counts(user=request.user)
        health = selectors.queue_health()
        paused = selectors.paused_queues()
        rows = [
            {
                "name": name,
                "paused": name in paused,
                "counts": [counts[name][status] for status in JobStatus.values],
                "oldest_waiting": _age(health[name]["oldestWaitingSeconds"]),
                **health[name],
            }
            for name in settings.FLOWSITE_QUEUES
        ]
        context = {
            **self.admin_site.each_context(request),
            "title": "Queues",
            "opts": self.opts,
            "statuses": [console.status_badge(status) for status in JobStatus.values],
            "rows": rows,
            "can_change": self.has_change_permission(request),
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/jobs/queuestate/queues.html", context)

    def pause_view(self, request: HttpRequest, name: str):
        return self._change(request, name, pause=True)

    def resume_view(self, request: HttpRequest, name: str):
        return self._change(request, name, pause=False)

    def _change(self, request: HttpRequest, name: str, *, pause: bool):
        if not self.has_change_permission(request):
            raise PermissionDenied
        if name not in settings.FLOWSITE_QUEUES:
            raise Http404(f"Unknown queue {name!r}.")
        changed = services.queue_pause(name=name) if pause else services.queue_resume(name=name)
        verb = "Paused" if pause else "Resumed"
        self.message_user(request, f"{verb} queue {name}: {changed} job{'s' if changed != 1 else ''} "
                                   f"{'paused' if pause else 'back to waiting'}.", messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:jobs_queuestate_changelist"))


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else console.format_seconds(seconds)

