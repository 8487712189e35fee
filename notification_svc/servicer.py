"""The NotificationService gRPC servicer: validate, call the domain, build the response."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import asyncpg
import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from notification_svc import validation
from notification_svc.notifications import SEND_ROLES, Notifications
from notification_svc.repository import NewNotification
from notification_svc.webhooks import WebhookEndpoints
from surveymesh.auth import ADMIN_ROLES, current_principal
from surveymesh.notification.v1 import (
    notification_pb2,
)
from surveymesh.notification.v1 import (
    notification_service_pb2 as pb,
)
from surveymesh.notification.v1 import (
    notification_service_pb2_grpc as pb_grpc,
)
from surveymesh.paging import page_size


def _ts(value: dt.datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def notification_message(row: asyncpg.Record) -> notification_pb2.Notification:
    """The proto of a stored notification."""
    msg = notification_pb2.Notification(
        id=str(row["id"]),
        org_id=row["org_id"],
        user_id=row["user_id"],
        type=row["type"],
        title=row["title"],
        body=row["body"],
        link=row["link"],
        metadata=row["metadata"],
        channels=list(row["channels"]),
        read=row["read_time"] is not None,
        sequence=row["sequence"],
        create_time=_ts(row["create_time"]),
    )
    if row["read_time"] is not None:
        msg.read_time.CopyFrom(_ts(row["read_time"]))
    return msg


def endpoint_message(row: asyncpg.Record) -> notification_pb2.WebhookEndpoint:
    """The proto of a stored endpoint (never its secret)."""
    return notification_pb2.WebhookEndpoint(
        id=str(row["id"]),
        org_id=row["org_id"],
        url=row["url"],
        event_types=list(row["event_types"]),
        description=row["description"],
        create_time=_ts(row["create_time"]),
    )


def attempt_message(row: asyncpg.Record) -> notification_pb2.DeliveryAttempt:
    """The proto of a recorded attempt."""
    latency = duration_pb2.Duration()
    latency.FromMicroseconds(round(row["latency_ms"] * 1000))
    msg = notification_pb2.DeliveryAttempt(
        id=str(row["id"]),
        notification_id=str(row["notification_id"]),
        channel=row["channel"],
        endpoint_id=str(row["endpoint_id"]) if row["endpoint_id"] else "",
        message_id=row["message_id"],
        attempt_number=row["attempt_number"],
        status=row["status"],
        response_code=row["response_code"],
        latency=latency,
        error=row["error"],
        attempt_time=_ts(row["attempt_time"]),
    )
    if row["next_attempt_time"] is not None:
        msg.next_attempt_time.CopyFrom(_ts(row["next_attempt_time"]))
    return msg


class NotificationServicer(pb_grpc.NotificationServiceServicer):
    """Implements ``surveymesh.notification.v1.NotificationService``.

    Args:
        notifications: In-app operations, attempts and endpoint listing.
        endpoints: Endpoint registration and secret rotation.
    """

    def __init__(self, notifications: Notifications, endpoints: WebhookEndpoints) -> None:
        self._n = notifications
        self._endpoints = endpoints

    async def SendNotification(
        self, request: pb.SendNotificationRequest, context: grpc.aio.ServicerContext
    ) -> pb.SendNotificationResponse:
        who = current_principal()
        who.require(SEND_ROLES, "sending notifications")
        channels = validation.validate_send(request)
        row, duplicate = await self._n.send(
            NewNotification(
                org_id=who.org,
                user_id=request.user_id,
                type=request.type,
                title=request.title,
                body=request.body,
                link=request.link,
                metadata=dict(request.metadata),
                channels=channels,
                email=request.email,
                idempotency_key=request.idempotency_key,
            )
        )
        return pb.SendNotificationResponse(
            notification=notification_message(row), duplicate=duplicate
        )

    async def ListNotifications(
        self, request: pb.ListNotificationsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListNotificationsResponse:
        who = current_principal()
        size = page_size(request.page_size)
        page, unread = await self._n.list(
            who, unread_only=request.unread_only, page_size=size, page_token=request.page_token
        )
        return pb.ListNotificationsResponse(
            notifications=[notification_message(r) for r in page.rows],
            next_page_token=page.next_page_token,
            unread_count=unread,
        )

    async def MarkNotificationRead(
        self, request: pb.MarkNotificationReadRequest, context: grpc.aio.ServicerContext
    ) -> pb.MarkNotificationReadResponse:
        who = current_principal()
        nid = validation.validate_id("notification_id", request.notification_id)
        row = await self._n.mark_read(who, nid)
        return pb.MarkNotificationReadResponse(notification=notification_message(row))

    async def WatchNotifications(
        self, request: pb.WatchNotificationsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchNotificationsResponse]:
        who = current_principal()
        validation.validate_watch(request)
        async for row in self._n.watch(who, request.after_sequence):
            yield pb.WatchNotificationsResponse(notification=notification_message(row))

    async def CreateWebhookEndpoint(
        self, request: pb.CreateWebhookEndpointRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateWebhookEndpointResponse:
        who = current_principal()
        who.require(ADMIN_ROLES, "managing webhook endpoints")
        validation.validate_create_endpoint(request)
        row, secret = await self._endpoints.create(
            who.org,
            url=request.url,
            event_types=list(request.event_types),
            description=request.description,
            request_id=request.request_id,
        )
        return pb.CreateWebhookEndpointResponse(endpoint=endpoint_message(row), secret=secret)

    async def ListWebhookEndpoints(
        self, request: pb.ListWebhookEndpointsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListWebhookEndpointsResponse:
        who = current_principal()
        who.require(ADMIN_ROLES, "managing webhook endpoints")
        size = page_size(request.page_size)
        page = await self._n.list_endpoints(who, page_size=size, page_token=request.page_token)
        return pb.ListWebhookEndpointsResponse(
            endpoints=[endpoint_message(r) for r in page.rows], next_page_token=page.next_page_token
        )

    async def DeleteWebhookEndpoint(
        self, request: pb.DeleteWebhookEndpointRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteWebhookEndpointResponse:
        who = current_principal()
        who.require(ADMIN_ROLES, "managing webhook endpoints")
        eid = validation.validate_id("endpoint_id", request.endpoint_id)
        await self._n.delete_endpoint(who, eid)
        return pb.DeleteWebhookEndpointResponse()

    async def RotateWebhookSecret(
        self, request: pb.RotateWebhookSecretRequest, context: grpc.aio.ServicerContext
    ) -> pb.RotateWebhookSecretResponse:
        who = current_principal()
        who.require(ADMIN_ROLES, "managing webhook endpoints")
        grace = validation.validate_rotate(request)
        eid = validation.validate_id("endpoint_id", request.endpoint_id)
        row, secret = await self._endpoints.rotate_secret(who.org, eid, grace)
        return pb.RotateWebhookSecretResponse(endpoint=endpoint_message(row), secret=secret)

    async def ListDeliveryAttempts(
        self, request: pb.ListDeliveryAttemptsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListDeliveryAttemptsResponse:
        who = current_principal()
        validation.validate_list_attempts(request)
        size = page_size(request.page_size)
        page = await self._n.list_attempts(
            who,
            notification_id=request.notification_id,
            endpoint_id=request.endpoint_id,
            page_size=size,
            page_token=request.page_token,
        )
        return pb.ListDeliveryAttemptsResponse(
            attempts=[attempt_message(r) for r in page.rows], next_page_token=page.next_page_token
        )
