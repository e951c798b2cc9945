"""URL routes: the admin, the REST API under /api/ (with or without trailing slash), health."""

from django.contrib import admin
from django.http import JsonResponse
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.routers import SimpleRouter

from flowsite.api import not_found
from flows.views import FlowViewSet
from jobs.views import DashboardView, QueueJobViewSet, QueueViewSet
from webhooks.views import DeliveryViewSet, WebhookViewSet


def health(request):
    return JsonResponse({"status": "ok"})


class OptionalSlashRouter(SimpleRouter):
    """Every route answers with and without its trailing slash (POST included: no redirect)."""

    def __init__(self):
        super().__init__()
        self.trailing_slash = "/?"


router = OptionalSlashRouter()
router.register("flows", FlowViewSet, basename="flow")
router.register(r"jobs/(?P<queue_name>[^/]+)", QueueJobViewSet, basename="queue-job")
router.register("queues", QueueViewSet, basename="queue")
router.register("webhooks", WebhookViewSet, basename="webhook")
router.register("deliveries", DeliveryViewSet, basename="delivery")

api_urls = [
    path("", include(router.urls)),
    re_path(r"^dashboard/?$", DashboardView.as_view(), name="dashboard"),
    path("auth/", include("accounts.urls")),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("redoc/", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
    # Last: every other path under /api/ (ids outside jobs.vocabulary.ID_PATTERN too) is a JSON 404.
    re_path(r"^[\s\S]*$", not_found),
]

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include(api_urls)),
    path("health", health),
]

handler400 = "flowsite.api.bad_request"
handler404 = "flowsite.api.not_found"
