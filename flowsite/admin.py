"""The admin site of the operators' console: Django's own, with the dashboard on its index page.

``INSTALLED_APPS`` names ``FlowsiteAdminConfig`` instead of ``django.contrib.admin``,
so ``admin.site`` (and every ``@admin.register``) is this site.
"""

from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.apps import AdminConfig


class FlowsiteAdminSite(admin.AdminSite):
    site_header = "Flowsite console"
    site_title = "Flowsite console"
    index_title = "Dashboard"

    def index(self, request, extra_context=None):
        """The stock index (the apps and models the user may see), with the dashboard's figures above it."""
        from flows.console import dashboard_context  # models are not loaded when this module is

        return super().index(request, {**dashboard_context(user=request.user), **(extra_context or {})})


class FlowsiteAdminConfig(AdminConfig):
    default_site = "flowsite.admin.FlowsiteAdminSite"
