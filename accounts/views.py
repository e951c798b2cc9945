"""API tokens: POST /api/auth/token (username + password -> token), POST /api/auth/logout,
POST /api/auth/logout-all and GET /api/auth/tokens."""

from __future__ import annotations

from django.contrib.auth import authenticate, logout
from drf_spectacular.utils import extend_schema
from knox.models import AuthToken
from rest_framework import exceptions, status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.throttling import AnonRateThrottle
from rest_framework.views import APIView

from accounts.selectors import api_tokens_of
from accounts.serializers import TokenCreateInputSerializer, TokenInfoOutputSerializer, TokenOutputSerializer
from accounts.services import api_token_create, api_token_revoke, api_tokens_revoke_all
from jobs.serializers import error_responses


class InvalidCredentials(exceptions.APIException):
    status_code = status.HTTP_401_UNAUTHORIZED
    default_detail = "Invalid username or password."
    default_code = "invalid_credentials"


class TokenThrottle(AnonRateThrottle):
    rate = "30/min"


class TokenCreateView(APIView):
    """Exchange a username and password for an API token (shown once; stored hashed)."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes = [TokenThrottle]

    @extend_schema(request=TokenCreateInputSerializer, responses={201: TokenOutputSerializer, **error_responses(400, 401, 429)}, tags=["auth"])
    def post(self, request):
        data = TokenCreateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = authenticate(request, **data.validated_data)
        if user is None or not user.is_active:
            raise InvalidCredentials()
        instance, token = api_token_create(user=user)
        return Response(TokenOutputSerializer({"token": token, "expiry": instance.expiry}).data, status=status.HTTP_201_CREATED)


class LogoutView(APIView):
    """Revoke the token that authenticates this request (with a session: end the session)."""

    @extend_schema(request=None, responses={204: None, **error_responses(401)}, tags=["auth"])
    def post(self, request):
        if isinstance(request.auth, AuthToken):
            api_token_revoke(token=request.auth)
        else:
            logout(request._request)
        return Response(status=status.HTTP_204_NO_CONTENT)


class LogoutAllView(APIView):
    """Revoke every token of the user (and end this request's session, if it has one)."""

    @extend_schema(request=None, responses={204: None, **error_responses(401)}, tags=["auth"])
    def post(self, request):
        api_tokens_revoke_all(user=request.user)
        if not isinstance(request.auth, AuthToken):
            logout(request._request)
        return Response(status=status.HTTP_204_NO_CONTENT)


class TokenListView(APIView):
    """The user's tokens that still authenticate, newest first, without their secrets."""

    @extend_schema(responses={200: TokenInfoOutputSerializer(many=True), **error_responses(401)}, tags=["auth"])
    def get(self, request):
        tokens = api_tokens_of(user=request.user, current=request.auth)
        return Response(TokenInfoOutputSerializer(tokens, many=True).data)
