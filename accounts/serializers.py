from rest_framework import serializers


class TokenCreateInputSerializer(serializers.Serializer):
    username = serializers.CharField()
    password = serializers.CharField(style={"input_type": "password"}, trim_whitespace=False)


class TokenOutputSerializer(serializers.Serializer):
    token = serializers.CharField()
    expiry = serializers.DateTimeField(allow_null=True)


class TokenInfoOutputSerializer(serializers.Serializer):
    """One of the user's tokens, without its secret. Knox does not record when a token was last used."""

    prefix = serializers.CharField(help_text="The token's first characters, to tell tokens apart.")
    created = serializers.DateTimeField()
    expiry = serializers.DateTimeField(allow_null=True, help_text="null: the token never expires.")
    current = serializers.BooleanField(help_text="The token that authenticated this request.")
