"""POST /api/auth/token: username + password -> API token."""

from __future__ import annotations

from django.contrib.auth import authenticate
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.throttling import AnonRateThrottle
from rest_framework.views import APIView

from accounts.serializers import TokenCreateInputSerializer, TokenOutputSerializer
from accounts.services import api_token_create
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
