"""Webhooks and their delivery log in the Django admin: thin callers of ``webhooks.services``."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts.permissions import sees_all
from flows.models import Flow
from jobs.vocabulary import DeliveryStatus, WebhookEvent
from webhooks import services
from webhooks.models import Delivery, Webhook
from webhooks.serializers import DELIVERY_TYPES
from webhooks.ssrf import UnsafeTarget, check_target


FILTER_FIELDS = ("flow_id", "queue_name", "flowname")


class WebhookForm(forms.ModelForm):
    events = forms.MultipleChoiceField(choices=WebhookEvent.choices, widget=forms.CheckboxSelectMultiple)

    class Meta:
        model = Webhook
        fields = ["owner", "url", "events", "description", "flow_id", "queue_name", "flowname", "all_flows", "active"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.initial["events"] = self.instance.events

    def clean_url(self) -> str:
        url = self.cleaned_data["url"]
        try:
            check_target(url)
        except UnsafeTarget as exc:
            raise forms.ValidationError(str(exc)) from None
        return url

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("all_flows") and cleaned.get("owner") and not sees_all(cleaned["owner"], Flow):
            self.add_error("all_flows", "Only an owner who sees every user's flows (flows.view_flow) may subscribe to all.")
        return cleaned


@admin.register(Webhook)
class WebhookAdmin(admin.ModelAdmin):
    form = WebhookForm
    list_display = ("id", "url", "owner", "subscribed", "active", "disabled_reason", "created_at")
    list_filter = ("active", "all_flows")
    search_fields = ("url", "description", "owner__username", "flowname", "flow_id")
    raw_id_fields = ("owner",)
    readonly_fields = ("disabled_reason", "created_at", "updated_at")
    actions = ["disable", "send_test"]

    @admin.display(description="events")
    def subscribed(self, webhook: Webhook) -> str:
        return ", ".join(webhook.events)

    def save_model(self, request: HttpRequest, obj: Webhook, form: WebhookForm, change: bool) -> None:
        fields = {name: form.cleaned_data[name] for name in WebhookForm.Meta.fields if name != "owner"}
        for name in FILTER_FIELDS:  # a blank filter is no filter
            fields[name] = fields[name] or None
        if change:
            services.webhook_update(webhook=obj, **fields)
        else:
            form.instance = services.webhook_create(owner=form.cleaned_data["owner"], **fields)
            obj.pk = form.instance.pk

    def delete_model(self, request: HttpRequest, obj: Webhook) -> None:
        services.webhook_delete(webhook=obj)

    @admin.action(description="Disable the selected webhooks")
    def disable(self, request: HttpRequest, queryset: QuerySet[Webhook]) -> None:
        done = sum(services.webhook_disable(webhook_id=pk, reason=f"Disabled by {request.user} in the admin.")
                   for pk in queryset.values_list("pk", flat=True))
        self.message_user(request, f"Disabled {done} webhook(s).", messages.SUCCESS)

    @admin.action(description="Send a test ping to the selected webhooks")
    def send_test(self, request: HttpRequest, queryset: QuerySet[Webhook]) -> None:
        for webhook in queryset.filter(active=True):
            delivery = services.webhook_test(webhook=webhook)
            level = messages.SUCCESS if delivery.status == DeliveryStatus.SUCCEEDED else messages.WARNING
            self.message_user(request, f"{webhook.url}: {delivery.status} {delivery.last_error}".strip(), level)


class EventTypeFilter(admin.SimpleListFilter):
    title = "event type"
    parameter_name = "event_type"

    def lookups(self, request, model_admin):
        return [(kind, kind) for kind in DELIVERY_TYPES]

    def queryset(self, request, queryset):
        return queryset.filter(event_type=self.value()) if self.value() else queryset


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = ("id", "webhook", "event_type", "flow_id", "seq", "status", "attempts", "last_status_code",
                    "error", "created_at", "delivered_at")
    list_filter = ("status", EventTypeFilter, "webhook__active")
    search_fields = ("event_id", "flow_id", "webhook__url")
    list_select_related = ("webhook",)
    readonly_fields = [field.name for field in Delivery._meta.fields]
    actions = ["redeliver", "disable_webhooks"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # deliveries come from events

    @admin.display(description="last error")
    def error(self, delivery: Delivery) -> str:
        return delivery.last_error[:120]

    @admin.action(description="Deliver the selected again")
    def redeliver(self, request: HttpRequest, queryset: QuerySet[Delivery]) -> None:
        for delivery in queryset:
            services.delivery_redeliver(delivery=delivery)
        self.message_user(request, f"{queryset.count()} delivery(ies) will be sent again.", messages.SUCCESS)

    @admin.action(description="Disable the webhooks of the selected")
    def disable_webhooks(self, request: HttpRequest, queryset: QuerySet[Delivery]) -> None:
        ids = set(queryset.values_list("webhook_id", flat=True))
        done = sum(services.webhook_disable(webhook_id=pk, reason=f"Disabled by {request.user} in the admin.")
                   for pk in ids)
        self.message_user(request, f"Disabled {done} webhook(s).", messages.SUCCESS)
