from django.contrib import admin

from flows.models import Flow


@admin.register(Flow)
class FlowAdmin(admin.ModelAdmin):
    list_display = ("id", "flowname", "name", "queue_name", "status", "owner", "total_jobs", "created_at")
    list_filter = ("status", "queue_name")
    search_fields = ("id", "flowname", "name", "legacy_id")
    raw_id_fields = ("owner",)
    readonly_fields = ("created_at", "updated_at", "started_at", "completed_at")
