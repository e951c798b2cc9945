"""Job input and output shapes (camelCase, the legacy contract)."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import OpenApiResponse, extend_schema_field
from rest_framework import serializers

from jobs.vocabulary import FLOW_UPDATED_MESSAGE, JobStatus, ReportedJobStatus


class JobOptionsSerializer(serializers.Serializer):
    """Documents ``opts`` (validated by ``jobs.options.parse_job_options``)."""

    attempts = serializers.IntegerField(required=False, min_value=1)
    backoff = serializers.JSONField(
        required=False, help_text="ms, or {type: fixed|exponential, delay: ms}; at most FLOWSITE_MAX_DURATION_MS"
    )
    delay = serializers.IntegerField(
        required=False, min_value=0, max_value=settings.FLOWSITE_MAX_DURATION_MS, help_text="milliseconds"
    )
    priority = serializers.IntegerField(required=False, min_value=0)
    timeout = serializers.IntegerField(
        required=False, min_value=1, max_value=settings.FLOWSITE_MAX_DURATION_MS, help_text="milliseconds"
    )
    failParentOnFailure = serializers.BooleanField(required=False)
    ignoreDependencyOnFailure = serializers.BooleanField(required=False)
    removeDependencyOnFailure = serializers.BooleanField(required=False)


class ErrorOutputSerializer(serializers.Serializer):
    """Every error: a message, details per field path, and for 409 the current status."""

    error = serializers.CharField()
    message = serializers.CharField(help_text="The same text as `error` (what legacy clients print).")
    details = serializers.DictField(child=serializers.ListField(child=serializers.CharField()))
    currentStatus = serializers.CharField(required=False)


ERROR_DESCRIPTIONS = {
    400: "Invalid input",
    401: "Not authenticated",
    403: "Not allowed: staff only, or another user's object without the model permission",
    404: "Not found, or not yours",
    409: "Conflict with the current state",
    413: "Request body too large",
    429: "Too many requests",
}


def error_responses(*codes: int) -> dict[int, OpenApiResponse]:
    """OpenAPI responses for the given error status codes, all in the error shape."""
    return {code: OpenApiResponse(ErrorOutputSerializer, description=ERROR_DESCRIPTIONS[code]) for code in codes}


@extend_schema_field(JobOptionsSerializer)
class JobOptionsField(serializers.DictField):
    """``opts`` as a plain object: the engine validates it, with its own error paths."""


class ErrorObjectSerializer(serializers.Serializer):
    """The ``error`` of a job or a flow (legacy ``{message, ...}``); other keys a reporter sent are kept."""

    message = serializers.CharField(help_text="The error text (also `errorMessage`).")
    type = serializers.CharField(required=False, help_text="The error's type, e.g. the exception class.")
    jobId = serializers.CharField(required=False, help_text="On a flow: the job whose failure failed it.")


MAX_ERROR_LENGTH = 10_000


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string", "maxLength": MAX_ERROR_LENGTH},
            {
                "type": "object",
                "properties": {
                    "message": {"type": "string", "minLength": 1, "maxLength": MAX_ERROR_LENGTH},
                    "type": {"type": "string"},
                    "jobId": {"type": "string"},
                },
                "required": ["message"],
                "additionalProperties": True,
            },
        ],
        "description": "A text, or an object whose `message` is the text (kept as sent, other keys too).",
    }
)
class ReportedErrorField(serializers.JSONField):
    """A reported ``error``: a string, or an object ``{message, type?, jobId?, ...}``."""

    def to_internal_value(self, data):
        data = super().to_internal_value(data)
        if isinstance(data, str):
            if len(data) > MAX_ERROR_LENGTH:
                raise serializers.ValidationError(f"At most {MAX_ERROR_LENGTH} characters.")
            return data
        if not isinstance(data, dict):
            raise serializers.ValidationError("Must be a string or an object with a `message`.")
        message = data.get("message")
        if not isinstance(message, str) or not message or len(message) > MAX_ERROR_LENGTH:
            raise serializers.ValidationError(
                f"An error object needs a `message`: a non-empty string of at most {MAX_ERROR_LENGTH} characters."
            )
        for key in ("type", "jobId"):
            if key in data and not isinstance(data[key], str):
                raise serializers.ValidationError(f"`{key}` must be a string.")
        return data


class JobStateOutputSerializer(serializers.Serializer):
    """A job's state in a flow's detail (built by ``jobs.selectors.job_state_payload``)."""

    jobId = serializers.CharField()
    parentJobId = serializers.CharField(allow_null=True)
    name = serializers.CharField()
    queueName = serializers.CharField()
    status = serializers.ChoiceField(choices=JobStatus.choices)
    progress = serializers.JSONField()
    attemptsMade = serializers.IntegerField()
    result = serializers.JSONField(allow_null=True)
    error = ErrorObjectSerializer(allow_null=True)
    errorMessage = serializers.CharField(allow_null=True, help_text="The error text (`error.message`).")
    createdAt = serializers.DateTimeField()
    startedAt = serializers.DateTimeField(allow_null=True)
    finishedAt = serializers.DateTimeField(allow_null=True)


class JobOutputSerializer(JobStateOutputSerializer):
    """A whole job (built by ``jobs.selectors.job_payload``): its state and its definition."""

    flowId = serializers.CharField(allow_null=True)
    attempts = serializers.IntegerField()
    data = serializers.JSONField()
    opts = serializers.JSONField()
    errorType = serializers.CharField(allow_null=True)


class FlowJobOutputSerializer(JobOutputSerializer):
    """A job in ``GET /api/flows/{flowId}/jobs``, with the legacy ``FlowJob`` fields too."""

    id = serializers.CharField(help_text="The job id (same as `jobId`).")
    children = serializers.ListField(child=serializers.CharField(), help_text="The ids of its children, in order.")
    updatedAt = serializers.DateTimeField(help_text="Its last recorded change: finish, else start, else creation.")


class JobReportInputSerializer(serializers.Serializer):
    """A job state reported from outside (legacy ``FlowUpdateRequest``); ``context["job_id"]`` is the URL's."""

    jobId = serializers.CharField(required=False, max_length=255, help_text="If sent, must be the URL's job id.")
    status = serializers.ChoiceField(choices=ReportedJobStatus.choices)
    result = serializers.JSONField(required=False, allow_null=True)
    error = ReportedErrorField(required=False, allow_null=True)
    progress = serializers.JSONField(required=False, allow_null=True)
    workerId = serializers.CharField(
        required=False, max_length=255,
        help_text="who reports (an external worker's own id). A `running` report claims a waiting job for it; "
        "reported again with the same workerId, `running` renews the claim (and progress). A `running` report "
        "on a job someone else runs is 409.",
    )

    def to_service(self) -> dict:
        """The validated report as ``jobs.services.job_report`` arguments."""
        fields = dict(self.validated_data)
        fields.pop("jobId", None)  # checked against the URL's (``validate_jobId``)
        fields["worker_id"] = fields.pop("workerId", None)
        return fields

    def validate_jobId(self, value: str) -> str:
        if value != self.context["job_id"]:
            raise serializers.ValidationError(
                f"The body's jobId {value!r} is not the job of the URL ({self.context['job_id']!r})."
            )
        return value


class JobReportOutputSerializer(JobOutputSerializer):
    message = serializers.CharField(help_text=f"`{FLOW_UPDATED_MESSAGE}`")


class JobSubmitInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    data = serializers.DictField(required=False)
    opts = JobOptionsField(required=False)
    flowId = serializers.CharField(required=False, max_length=64)


class JobSubmitOutputSerializer(serializers.Serializer):
    jobId = serializers.CharField()
    message = serializers.CharField()
    job = JobOutputSerializer()


class QueueHealthSerializer(serializers.Serializer):
    external = serializers.BooleanField(
        help_text="an external queue (FLOWSITE_EXTERNAL_QUEUES): its jobs run outside Flowsite and are reported"
    )
    liveWorkers = serializers.IntegerField(
        help_text="worker processes consuming the queue whose heartbeat is fresh (FLOWSITE_STALLED_AFTER)"
    )
    oldestWaitingSeconds = serializers.FloatField(
        allow_null=True, help_text="age of the oldest waiting job, since its creation; null if none waits"
    )
    stalledTotal = serializers.IntegerField(help_text="runs the sweep found lost (their worker died), ever")
    redispatchedTotal = serializers.IntegerField(help_text="job messages the sweep published again, ever")


class QueueOutputSerializer(QueueHealthSerializer):
    name = serializers.CharField()
    paused = serializers.BooleanField()
    counts = serializers.DictField(child=serializers.IntegerField(), help_text="jobs per status")


class QueueActionOutputSerializer(serializers.Serializer):
    name = serializers.CharField()
    paused = serializers.BooleanField()
    jobsAffected = serializers.IntegerField()


class HourCountSerializer(serializers.Serializer):
    hour = serializers.DateTimeField(help_text="Start of the hour (UTC).")
    count = serializers.IntegerField()


class DashboardOutputSerializer(serializers.Serializer):
    queues = serializers.DictField(child=serializers.DictField(child=serializers.IntegerField()))
    queueHealth = serializers.DictField(child=QueueHealthSerializer())
    flows = serializers.DictField(child=serializers.IntegerField())
    latestFailures = JobOutputSerializer(many=True)
    flowsPerHour = HourCountSerializer(many=True, help_text="Flows created in each of the last 24 hours, oldest first.")
