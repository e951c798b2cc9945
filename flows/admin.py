"""Flows in the operators' console: the list with live badges and progress, the flow page's job tree, actions.

Thin: every action calls the service the API calls (``flows.services``), every figure
comes from ``flows.selectors``. Everything the engine owns is read-only, and a posted
form changes nothing: the rows are only ever changed by the engine's conditional updates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.db.models import Count, DurationField, ExpressionWrapper, F, QuerySet
from django.db.models.functions import Coalesce, Now
from django.http import HttpRequest, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html
from django.views.decorators.http import require_POST

from flows import console, selectors, services
from flows.models import Flow
from jobs.admin import QueueFilter
from jobs.exceptions import InvalidTransition
from jobs.models import Job, JobLog


class FlowChangeList(ChangeList):
    """The flow list, with the progress of the flows on the page read in one query."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        self.result_list = list(self.result_list)
        progress = selectors.flows_progress(flow_ids=[flow.pk for flow in self.result_list])
        for flow in self.result_list:
            flow.console_progress = progress[flow.pk]


@admin.register(Flow)
class FlowAdmin(admin.ModelAdmin):
    list_display = (
        "flowname", "flow_id", "status_badge", "progress_bar", "queue_name", "owner", "created_at", "started_at",
        "duration",
    )
    list_display_links = ("flowname", "flow_id")
    list_filter = ("status", QueueFilter, "owner", "created_at")
    search_fields = ("=id", "flowname")
    search_help_text = "A flow id, a job id of the flow, or part of the flowname."
    list_select_related = ("owner",)
    sortable_by = ("flowname", "status_badge", "queue_name", "created_at", "started_at", "duration")
    actions = ["cancel_flows", "retry_flows", "delete_selected"]
    fieldsets = (
        (None, {"fields": (("flow_id", "flowname"), ("name", "queue_name", "owner"), ("status_badge", "progress_bar"))}),
        ("Times", {"fields": (("created_at", "started_at", "completed", "duration"),)}),
        ("Outcome", {"fields": ("result_json", "error_text")}),
    )
    readonly_fields = (
        "flow_id", "flowname", "name", "queue_name", "owner", "status_badge", "progress_bar", "created_at",
        "started_at", "completed", "duration", "result_json", "error_text",
    )
    change_form_template = "admin/flows/flow/change_form.html"

    # QUERIES
    def get_queryset(self, request: HttpRequest) -> QuerySet[Flow]:
        running_time = ExpressionWrapper(Coalesce("completed_at", Now()) - F("started_at"), output_field=DurationField())
        return super().get_queryset(request).defer("job_structure").annotate(running_time=running_time)

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return FlowChangeList

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[Flow], search_term: str):
        """Also find the flow of a job id."""
        results, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        term = search_term.strip()
        if term:
            results |= queryset.filter(pk__in=Job.objects.filter(pk=term).values("flow_id"))
        return results, may_have_duplicates

    # COLUMNS AND FIELDS
    @admin.display(description="flowId", ordering="id")
    def flow_id(self, flow: Flow):
        return format_html('<code class="fs-id">{}</code>', flow.pk)

    @admin.display(description="status", ordering="status")
    def status_badge(self, flow: Flow):
        return console.status_badge(flow.status, flow_id=flow.pk)

    @admin.display(description="progress")
    def progress_bar(self, flow: Flow):
        progress = getattr(flow, "console_progress", None) or selectors.flow_progress(flow=flow)
        return console.progress_bar(progress, flow_id=flow.pk)

    @admin.display(description="duration", ordering="running_time")
    def duration(self, flow: Flow):
        return format_html('<span data-flow-duration="{}">{}</span>', flow.pk, console.duration(flow.started_at, flow.completed_at))

    @admin.display(description="completed at", ordering="completed_at")
    def completed(self, flow: Flow):
        at = date_format(timezone.localtime(flow.completed_at), "DATETIME_FORMAT") if flow.completed_at else "-"
        return format_html('<span data-flow-completed="{}">{}</span>', flow.pk, at)

    @admin.display(description="result")
    def result_json(self, flow: Flow):
        return format_html('<div data-flow-result="{}">{}</div>', flow.pk, console.json_block("", flow.result))

    @admin.display(description="error")
    def error_text(self, flow: Flow):
        return format_html('<div data-flow-error="{}">{}</div>', flow.pk, flow.error or "-")

    # PERMISSIONS: flows are created through the API or the command line, never in a form.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def save_model(self, request, obj, form, change) -> None:
        """Write only what the form changed, with a plain update: never a whole row a worker is changing.

        Every field is read-only, so nothing is written: a posted ``status`` is ignored.
        """
        if form.changed_data:
            Flow.objects.filter(pk=obj.pk).update(**{name: getattr(obj, name) for name in form.changed_data})

    # PAGES
    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None):
        return super().changelist_view(request, {**(extra_context or {}), "console_config": console.console_config()})

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None):
        extra = {"show_save": False, "show_save_and_continue": False, "show_save_and_add_another": False}
        return super().change_view(request, object_id, form_url, {**extra, **(extra_context or {})})

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:
            roots = selectors.flow_jobs_tree(flow=obj, fields=selectors.CONSOLE_TREE_FIELDS)
            logs = selectors.flow_job_logs(flow=obj, per_job=console.LOG_LINES_PER_JOB)
            context.update(
                job_tree=console.job_tree_html(roots, logs),
                console_config=console.console_config(flow_id=obj.pk),
                can_act=self.has_change_permission(request, obj),
                can_delete=self.has_delete_permission(request, obj),
                jobs_url=reverse("admin:jobs_job_changelist") + f"?flow={obj.pk}",
            )
        return super().render_change_form(request, context, add, change, form_url, obj)

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        return [
            path("<path:object_id>/cancel/", self.admin_site.admin_view(require_POST(self.cancel_view)),
                 name="%s_%s_cancel" % info),
            path("<path:object_id>/retry/", self.admin_site.admin_view(require_POST(self.retry_view)),
                 name="%s_%s_retry" % info),
            *super().get_urls(),
        ]

    # ACTIONS (the same services as POST /api/flows/{flowId}/cancel and /retry)
    @admin.action(description="Cancel selected flows", permissions=["change"])
    def cancel_flows(self, request: HttpRequest, queryset: QuerySet[Flow]) -> None:
        self._apply(request, queryset, services.flow_cancel, done="Cancelled", verb="cancel")

    @admin.action(description="Retry the failed jobs of selected flows", permissions=["change"])
    def retry_flows(self, request: HttpRequest, queryset: QuerySet[Flow]) -> None:
        self._apply(request, queryset, services.flow_retry, done="Retried", verb="retry")

    def cancel_view(self, request: HttpRequest, object_id: str):
        return self._flow_page_action(request, object_id, services.flow_cancel, done="Cancelled", verb="cancel")

    def retry_view(self, request: HttpRequest, object_id: str):
        return self._flow_page_action(request, object_id, services.flow_retry, done="Retried", verb="retry")

    def _flow_page_action(self, request, object_id, service, *, done: str, verb: str):
        flow = get_object_or_404(self.get_queryset(request), pk=object_id)
        if not self.has_change_permission(request, flow):
            raise PermissionDenied
        self._apply(request, [flow], service, done=done, verb=verb)
        return HttpResponseRedirect(reverse("admin:flows_flow_change", args=[flow.pk]))

    def _apply(self, request, flows, service: Callable[..., Flow], *, done: str, verb: str) -> None:
        """Call ``service`` on each flow; tell how many changed and which could not, with their status."""
        changed, refused = 0, []
        for flow in flows:
            try:
                service(flow=flow)
                changed += 1
            except InvalidTransition as exc:
                refused.append(f"{flow.flowname} ({flow.pk}): {exc.current_status}")
        if changed:
            self.message_user(request, f"{done} {changed} flow{'s' if changed != 1 else ''}.", messages.SUCCESS)
        if refused:
            self.message_user(
                request,
                f"Could not {verb} {len(refused)} flow{'s' if len(refused) != 1 else ''}: {'; '.join(refused)}.",
                messages.WARNING,
            )

    # DELETE (Django's confirmation page; the deletion is ``flows.services.flow_delete``)
    def get_deleted_objects(self, objs, request):
        """What the confirmation page lists: each flow with its job count, not every job and log line."""
        flows = list(objs)
        jobs = dict(
            Job.objects.filter(flow_id__in=[flow.pk for flow in flows]).values("flow_id")
            .annotate(n=Count("pk")).order_by().values_list("flow_id", "n")
        )
        logs = JobLog.objects.filter(job__flow_id__in=[flow.pk for flow in flows]).count()
        listed = [
            format_html('<a href="{}">{}</a>: its {} jobs and their log lines',
                        reverse("admin:flows_flow_change", args=[flow.pk]), str(flow), jobs.get(flow.pk, 0))
            for flow in flows
        ]
        counts = {Flow._meta.verbose_name_plural: len(flows), Job._meta.verbose_name_plural: sum(jobs.values()),
                  JobLog._meta.verbose_name_plural: logs}
        return listed, counts, set(), []

    def delete_model(self, request: HttpRequest, obj: Flow) -> None:
        services.flow_delete(flow=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Flow]) -> None:
        for flow in queryset:
            services.flow_delete(flow=flow)
