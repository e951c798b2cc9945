"""Flow input and output shapes (camelCase, the legacy contract)."""

from __future__ import annotations

from rest_framework import serializers

from jobs.serializers import ErrorObjectSerializer, JobOptionsField, JobStateOutputSerializer
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


class ProgressSummarySerializer(serializers.Serializer):
    """A flow's job counts (legacy ``FlowProgress.summary``)."""

    total = serializers.IntegerField(help_text="The flow's jobs.")
    completed = serializers.IntegerField()
    failed = serializers.IntegerField()
    percentage = serializers.FloatField(
        help_text="The share of the flow's jobs that completed, in percent (0 to 100, one decimal): "
        "100 * completed / total. Failed and cancelled jobs do not count as done; 0 for a flow without jobs."
    )

    def get_fields(self):
        fields = super().get_fields()
        for status in JobStatus:
            fields.setdefault(status.value, serializers.IntegerField(help_text=f"Jobs {status.value}."))
        return fields


class ProgressSerializer(ProgressSummarySerializer):
    """A flow's progress: the counts, flat (Flowsite) and under ``summary`` (legacy)."""

    summary = ProgressSummarySerializer()


class ProgressJobSerializer(serializers.Serializer):
    """One job in the flow detail's ``progress.jobs`` (legacy ``FlowProgress.jobs``)."""

    name = serializers.CharField()
    queueName = serializers.CharField()
    status = serializers.ChoiceField(choices=JobStatus.choices)
    result = serializers.JSONField(allow_null=True)
    error = ErrorObjectSerializer(allow_null=True)
    startedAt = serializers.DateTimeField(allow_null=True)
    completedAt = serializers.DateTimeField(allow_null=True, help_text="When it finished (`finishedAt`).")


class FlowDetailProgressSerializer(ProgressSerializer):
    jobs = serializers.DictField(child=ProgressJobSerializer(), help_text="Every job of the flow, by job id.")


class FlowOutputSerializer(serializers.Serializer):
    """A flow. Built at run time by ``flows.selectors.flow_payload`` (lean path); this documents it."""

    flowId = serializers.CharField(source="id")
    flowname = serializers.CharField()
    name = serializers.CharField()
    queueName = serializers.CharField(source="queue_name")
    status = serializers.ChoiceField(choices=FlowStatus.choices)
    progress = serializers.SerializerMethodField()
    result = serializers.JSONField(allow_null=True)
    error = ErrorObjectSerializer(allow_null=True, help_text="`{message, type, jobId}` of a failed flow, else null.")
    errorMessage = serializers.CharField(allow_null=True, help_text="The error text (`error.message`).")
    createdAt = serializers.DateTimeField(source="created_at")
    updatedAt = serializers.DateTimeField(source="updated_at")
    startedAt = serializers.DateTimeField(source="started_at", allow_null=True)
    completedAt = serializers.DateTimeField(source="completed_at", allow_null=True)

    def get_progress(self, flow) -> ProgressSerializer:
        raise NotImplementedError  # documentation only


class JobStructureSerializer(serializers.Serializer):
    root = serializers.JSONField(
        help_text="The root job as submitted, `{jobId, name, queueName, data, opts?, children?}`, recursively."
    )


class FlowDetailOutputSerializer(FlowOutputSerializer):
    jobs = serializers.SerializerMethodField()
    jobStructure = JobStructureSerializer()

    def get_progress(self, flow) -> FlowDetailProgressSerializer:
        raise NotImplementedError  # documentation only

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
