from django.contrib import admin

from jobs.models import Job, JobLog


class JobLogInline(admin.TabularInline):
    model = JobLog
    extra = 0
    readonly_fields = ("created_at", "message")
    can_delete = False


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "queue_name", "status", "attempts_made", "flow", "created_at", "finished_at")
    list_filter = ("status", "queue_name")
    search_fields = ("id", "name", "flow__id", "flow__flowname")
    raw_id_fields = ("flow", "parent")
    readonly_fields = ("created_at", "started_at", "finished_at")
    inlines = [JobLogInline]
