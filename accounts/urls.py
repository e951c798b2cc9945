"""/api/auth/...: every route with or without its trailing slash (POST included: no redirect)."""

from django.urls import re_path

from accounts.views import LogoutAllView, LogoutView, TokenCreateView, TokenListView

urlpatterns = [
    re_path(r"^token/?$", TokenCreateView.as_view(), name="auth-token"),
    re_path(r"^logout/?$", LogoutView.as_view(), name="auth-logout"),
    re_path(r"^logout-all/?$", LogoutAllView.as_view(), name="auth-logout-all"),
    re_path(r"^tokens/?$", TokenListView.as_view(), name="auth-tokens"),
]
