"""Flow input and output shapes (camelCase, the legacy contract)."""

from __future__ import annotations

from rest_framework import serializers

from jobs.serializers import JobOptionsField, JobStateOutputSerializer
from jobs.vocabulary import FlowStatus, JobStatus


class JobNodeInputSerializer(serializers.Serializer):
    """One node of a flow tree. Validation is the engine's (``flows.specs``), with paths."""

    name = serializers.CharField(help_text="A registered job handler.")
    queueName = serializers.CharField(help_text="One of the allowed queues (GET /api/queues).")
    data = serializers.DictField(required=False)
    opts = JobOptionsField(required=False)
    children = serializers.ListField(
        child=serializers.DictField(), required=False, help_text="Child jobs, same shape (recursive)."
    )


class FlowCreateInputSerializer(JobNodeInputSerializer):
    flowname = serializers.CharField(max_length=200)


class ProgressSerializer(serializers.Serializer):
    total = serializers.IntegerField()
    completed = serializers.IntegerField()
    failed = serializers.IntegerField()
    percentage = serializers.FloatField()

    def get_fields(self):
        fields = super().get_fields()
        for status in JobStatus:
            fields.setdefault(status.value, serializers.IntegerField())
        return fields


class FlowOutputSerializer(serializers.Serializer):
    """A flow. Built at run time by ``flows.selectors.flow_payload`` (lean path); this documents it."""

    flowId = serializers.CharField(source="id")
    flowname = serializers.CharField()
    name = serializers.CharField()
    queueName = serializers.CharField(source="queue_name")
    status = serializers.ChoiceField(choices=FlowStatus.choices)
    progress = serializers.SerializerMethodField()
    result = serializers.JSONField(allow_null=True)
    error = serializers.SerializerMethodField()
    createdAt = serializers.DateTimeField(source="created_at")
    updatedAt = serializers.DateTimeField(source="updated_at")
    startedAt = serializers.DateTimeField(source="started_at", allow_null=True)
    completedAt = serializers.DateTimeField(source="completed_at", allow_null=True)

    def get_progress(self, flow) -> ProgressSerializer:
        raise NotImplementedError  # documentation only

    def get_error(self, flow) -> str | None:
        raise NotImplementedError  # documentation only


class FlowDetailOutputSerializer(FlowOutputSerializer):
    jobs = serializers.SerializerMethodField()
    jobStructure = serializers.JSONField(source="job_structure")

    def get_jobs(self, flow) -> JobStateOutputSerializer(many=True):
        raise NotImplementedError  # documentation only


class FlowActionOutputSerializer(serializers.Serializer):
    flowId = serializers.CharField()
    message = serializers.CharField()
    flow = FlowOutputSerializer()


class FlowJobsQuerySerializer(serializers.Serializer):
    status = serializers.ChoiceField(
        choices=JobStatus.choices,
        required=False,
        error_messages={"invalid_choice": f"\"{{input}}\" is not a job status. Valid: {', '.join(JobStatus.values)}."},
    )
