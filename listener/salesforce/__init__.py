"""Salesforce REST client and OAuth: the one place the project talks HTTP to Salesforce."""

from __future__ import annotations

from listener.salesforce._transport import RetryPolicy, SalesforceFatalError
from listener.salesforce.auth import AccessToken, fetch_token, parse_token_response, token_request
from listener.salesforce.client import COLLECTION_LIMIT, ClientState, SalesforceClient
from listener.salesforce.http import AiohttpTransport, HttpRequest, HttpResponse, HttpTransport, NetworkError
from listener.salesforce.usage import ApiUsage, parse_limit_info

__all__ = [
    "COLLECTION_LIMIT",
    "AccessToken",
    "AiohttpTransport",
    "ApiUsage",
    "ClientState",
    "HttpRequest",
    "HttpResponse",
    "HttpTransport",
    "NetworkError",
    "RetryPolicy",
    "SalesforceClient",
    "SalesforceFatalError",
    "fetch_token",
    "parse_limit_info",
    "parse_token_response",
    "token_request",
]
