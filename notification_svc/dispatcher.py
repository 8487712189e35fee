"""The delivery dispatcher: drains the outbox with retries, inside the service process.

``SendNotification`` writes one ``deliveries`` row per (channel, endpoint) in the same
transaction as the notification. The dispatcher claims due rows (``FOR UPDATE SKIP
LOCKED``, so every replica runs one and they share the work), attempts them, records each
attempt and reschedules failures with exponential backoff. It wakes at once when a
delivery is created (in-process event, or ``LISTEN`` for other replicas) and also polls,
so a due retry, or a row a crashed process had claimed, is still delivered.

Retention: every ``purge_interval`` the dispatcher also deletes what is finished and older
than ``SURVEYMESH_NOTIFICATION_RETENTION_DAYS`` (default 30; 0 keeps everything): succeeded
and failed deliveries with their attempts and kept emails (table row and ``.eml`` file),
then notifications that have no delivery left and are either not in-app or read. Pending
and retrying deliveries are never touched, nor are unread in-app notifications (the
user's inbox keeps what they have not seen). Deletes go in small batches, each one short
statement that skips rows other transactions hold, so the purge never blocks delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import asyncpg

from notification_svc.repository import (
    CHANNEL_EMAIL,
    CHANNEL_IN_APP,
    CHANNEL_WEBHOOK,
    FAILED,
    RETRYING,
    SUCCEEDED,
    AttemptRecord,
    DeliveryJob,
    Repository,
)
from surveymesh.config import ConfigError
from surveymesh.telemetry import record_delivery

log = logging.getLogger(__name__)

# Metric labels of channels and attempt results.
CHANNEL_NAMES = {CHANNEL_IN_APP: "in_app", CHANNEL_EMAIL: "email", CHANNEL_WEBHOOK: "webhook"}
STATUS_NAMES = {SUCCEEDED: "succeeded", RETRYING: "retrying", FAILED: "failed"}


@dataclass(frozen=True)
class DeliveryPolicy:
    """Retry and concurrency settings of the dispatcher.

    Attributes:
        base_delay: Seconds before the first retry; doubled for each further one.
        max_delay: Cap of one retry delay, in seconds.
        max_attempts: Attempts before a delivery fails for good.
        jitter: Relative spread of each delay (0.2: ±20 %), so retries of many
            deliveries to one failing receiver do not arrive in lockstep.
        lease_seconds: How long a claim lasts; must exceed the longest attempt. A
            process that dies mid-attempt delays that delivery by at most this.
        poll_interval: Seconds between outbox polls when nothing wakes the dispatcher.
        batch_size: Deliveries claimed per query.
        max_in_flight: Concurrent attempts per process.
        webhook_timeout: Total seconds for one webhook POST.
        smtp_timeout: Seconds for one SMTP conversation.
        shutdown_timeout: How long a stopping dispatcher lets attempts finish before it
            cancels them and releases their claims.
        retention_days: Age (days since they finished, or were created) after which
            finished deliveries, their attempts and emails, and done notifications are
            deleted; 0 keeps everything.
        purge_interval: Seconds between retention purges (the first one runs after at
            most a minute).
        purge_batch: Rows deleted per statement, so no purge holds locks for long.
    """

    base_delay: float = 5.0
    max_delay: float = 3600.0
    max_attempts: int = 8
    jitter: float = 0.2
    lease_seconds: float = 120.0
    poll_interval: float = 2.0
    batch_size: int = 32
    max_in_flight: int = 64
    webhook_timeout: float = 10.0
    smtp_timeout: float = 30.0
    shutdown_timeout: float = 5.0
    retention_days: int = 30
    purge_interval: float = 3600.0
    purge_batch: int = 500

    def __post_init__(self) -> None:
        if self.base_delay <= 0 or self.max_delay < self.base_delay:
            raise ConfigError("retry delays must be positive and max_delay >= base_delay")
        if self.max_attempts < 1 or self.batch_size < 1 or self.max_in_flight < 1:
            raise ConfigError("max_attempts, batch_size and max_in_flight must be at least 1")
        if self.lease_seconds <= max(self.webhook_timeout, self.smtp_timeout):
            raise ConfigError("lease_seconds must exceed the webhook and SMTP timeouts")
        if self.retention_days < 0:
            raise ConfigError("SURVEYMESH_NOTIFICATION_RETENTION_DAYS must be 0 or more")
        if self.purge_interval <= 0 or self.purge_batch < 1:
            raise ConfigError("purge_interval must be positive and purge_batch at least 1")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DeliveryPolicy:
        """Reads ``SURVEYMESH_NOTIFY_RETRY_BASE_SECONDS``, ``..._RETRY_MAX_SECONDS``,
        ``..._MAX_ATTEMPTS``, ``..._POLL_SECONDS`` and
        ``SURVEYMESH_NOTIFICATION_RETENTION_DAYS`` (defaults otherwise)."""
        e = os.environ if env is None else env
        d = cls()

        def num(name: str, default: float) -> float:
            raw = e.get(f"SURVEYMESH_NOTIFY_{name}", "")
            try:
                return float(raw) if raw else default
            except ValueError:
                raise ConfigError(
                    f"SURVEYMESH_NOTIFY_{name} must be a number, got {raw!r}"
                ) from None

        retention = e.get("SURVEYMESH_NOTIFICATION_RETENTION_DAYS", "")
        try:
            retention_days = int(retention) if retention else d.retention_days
        except ValueError:
            raise ConfigError(
                f"SURVEYMESH_NOTIFICATION_RETENTION_DAYS must be whole days, got {retention!r}"
            ) from None
        return cls(
            base_delay=num("RETRY_BASE_SECONDS", d.base_delay),
            max_delay=num("RETRY_MAX_SECONDS", d.max_delay),
            max_attempts=int(num("MAX_ATTEMPTS", d.max_attempts)),
            poll_interval=num("POLL_SECONDS", d.poll_interval),
            retention_days=retention_days,
        )


def backoff_delay(
    policy: DeliveryPolicy, attempt_number: int, rng: Callable[[], float] = random.random
) -> float:
    """Seconds to wait after failed attempt ``attempt_number`` (1-based).

    ``base * 2^(n-1)``, capped, then spread by ±``jitter``, and capped again.
    """
    exponent = min(attempt_number - 1, 62)  # 2**62 already exceeds any cap
    delay = min(policy.max_delay, policy.base_delay * 2.0**exponent)
    delay *= 1.0 + policy.jitter * (2.0 * rng() - 1.0)
    return max(0.0, min(policy.max_delay, delay))


@dataclass(frozen=True)
class Outcome:
    """What one attempt achieved.

    Attributes:
        kind: ``success``, ``retry`` (transient: timeout, 5xx, 408/429, connection) or
            ``fail`` (permanent: 410, other 4xx, refused address).
        response_code: HTTP status or SMTP reply code; 0 when none arrived.
        error: What went wrong (empty on success).
        retry_after: The receiver's ``Retry-After`` in seconds, if it sent one.
    """

    kind: str
    response_code: int = 0
    error: str = ""
    retry_after: float | None = None

    @classmethod
    def success(cls, code: int = 0) -> Outcome:
        """Delivered."""
        return cls("success", code)

    @classmethod
    def retry(cls, code: int, error: str, retry_after: float | None = None) -> Outcome:
        """Failed, worth trying again."""
        return cls("retry", code, error, retry_after)

    @classmethod
    def fail(cls, code: int, error: str) -> Outcome:
        """Failed for good."""
        return cls("fail", code, error)


def next_step(
    policy: DeliveryPolicy,
    outcome: Outcome,
    attempt_number: int,
    now: dt.datetime,
    rng: Callable[[], float] = random.random,
) -> tuple[int, dt.datetime | None, str]:
    """Decides a delivery's new status after an attempt.

    Returns:
        ``(status, next_attempt_time, error)``.
    """
    if outcome.kind == "success":
        return SUCCEEDED, None, ""
    if outcome.kind == "fail":
        return FAILED, None, outcome.error
    if attempt_number >= policy.max_attempts:
        return FAILED, None, f"{outcome.error} (gave up after {attempt_number} attempts)"
    delay = backoff_delay(policy, attempt_number, rng)
    if outcome.retry_after is not None:
        delay = max(delay, min(outcome.retry_after, policy.max_delay))
    return RETRYING, now + dt.timedelta(seconds=delay), outcome.error


@dataclass(frozen=True)
class Purged:
    """What one retention purge deleted."""

    deliveries: int = 0
    attempts: int = 0
    emails: int = 0
    notifications: int = 0


class Channel(Protocol):
    """Something that attempts deliveries of one channel (webhooks, email)."""

    async def deliver(self, job: DeliveryJob) -> Outcome:
        """Makes one attempt; never raises for a receiver's failure."""
        ...


class Dispatcher:
    """Claims and attempts due deliveries until stopped.

    Args:
        repo: The repository.
        policy: Retry, concurrency and retention settings.
        channels: The deliverer of each channel number.
        outbox_dir: Where this process keeps ``.eml`` files; the purge deletes the files of
            the outbox rows it deletes (only files in this directory).
    """

    def __init__(
        self,
        repo: Repository,
        policy: DeliveryPolicy,
        channels: Mapping[int, Channel],
        *,
        outbox_dir: Path | None = None,
    ) -> None:
        self._repo = repo
        self._policy = policy
        self._channels = dict(channels)
        self._outbox_dir = outbox_dir.resolve() if outbox_dir is not None else None
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._purge_task: asyncio.Task[None] | None = None
        self._in_flight: dict[asyncio.Task[None], tuple[DeliveryJob, uuid.UUID]] = {}

    def wake(self) -> None:
        """Asks for an immediate look at the outbox (a delivery was just created)."""
        self._wake.set()

    def start(self) -> None:
        """Starts the dispatch loop as a task of the running event loop."""
        self._task = asyncio.create_task(self._run(), name="notification-dispatcher")
        if self._policy.retention_days > 0:
            self._purge_task = asyncio.create_task(
                self._purge_periodically(), name="notification-retention"
            )

    async def stop(self, wait_seconds: float | None = None) -> None:
        """Stops claiming, lets in-flight attempts finish for up to ``wait_seconds``
        (default: the policy's ``shutdown_timeout``),
        then cancels the rest and releases their claims so another replica (or the next
        start) makes them without waiting for the lease to expire."""
        self._stopping = True
        self._wake.set()
        if self._purge_task is not None:
            # A batch cut short rolls back as a whole; the next start deletes it again.
            self._purge_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purge_task
        if self._task is not None:
            await self._task
        if not self._in_flight:
            return
        wait = self._policy.shutdown_timeout if wait_seconds is None else wait_seconds
        _done, pending = await asyncio.wait(list(self._in_flight), timeout=wait)
        unfinished = [self._in_flight[t] for t in pending]
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if unfinished:
            try:
                await self._repo.release([(job.delivery_id, token) for job, token in unfinished])
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                # The leases expire by themselves; the deliveries are only delayed.
                log.warning("could not release %d claimed deliveries", len(unfinished))
            log.info("released %d unfinished deliveries", len(unfinished))

    async def _run(self) -> None:
        policy = self._policy
        while not self._stopping:
            self._wake.clear()
            free = policy.max_in_flight - len(self._in_flight)
            claimed: list[DeliveryJob] = []
            token = uuid.uuid4()
            if free > 0:
                try:
                    claimed = await self._repo.claim_due(
                        min(free, policy.batch_size), policy.lease_seconds, token
                    )
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.warning("claiming deliveries failed: %r", exc)
                except Exception:
                    log.exception("claiming deliveries failed")
            for job in claimed:
                task = asyncio.create_task(self._attempt(job, token))
                self._in_flight[task] = (job, token)
                task.add_done_callback(self._finished)
            if len(claimed) == policy.batch_size and not self._stopping:
                await asyncio.sleep(0)  # more may be due: claim again, but let others run
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=policy.poll_interval)
            except TimeoutError:
                pass

    async def _purge_periodically(self) -> None:
        policy = self._policy
        # The first purge soon after start (a process restarted more often than the
        # interval still purges), spread so replicas started together do not coincide.
        delay = min(policy.purge_interval, 60.0) * (0.5 + random.random() / 2)
        while not self._stopping:
            await asyncio.sleep(delay)
            delay = policy.purge_interval
            try:
                await self.purge()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("retention purge failed: %r", exc)
            except Exception:
                log.exception("retention purge failed")

    async def purge(self, now: dt.datetime | None = None) -> Purged:
        """Deletes what the retention window no longer keeps (see the module docstring).

        Args:
            now: The reference time (default: the current time).

        Returns:
            The counts deleted; all zero when ``retention_days`` is 0.
        """
        policy = self._policy
        if policy.retention_days <= 0:
            return Purged()
        before = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=policy.retention_days)
        deliveries = attempts = emails = notifications = 0
        while True:
            batch = await self._repo.purge_finished_deliveries(before, policy.purge_batch)
            deliveries += batch.deliveries
            attempts += batch.attempts
            emails += len(batch.eml_paths)
            await self._remove_files(batch.eml_paths)
            if batch.deliveries < policy.purge_batch:
                break
            await asyncio.sleep(0)  # let attempts and RPCs run between batches
        # Notifications after deliveries: a notification goes only once none is left.
        while True:
            count = await self._repo.purge_notifications(before, policy.purge_batch)
            notifications += count
            if count < policy.purge_batch:
                break
            await asyncio.sleep(0)
        purged = Purged(deliveries, attempts, emails, notifications)
        if purged != Purged():
            log.info(
                "retention (%d days): deleted %d deliveries, %d attempts, %d emails, "
                "%d notifications",
                policy.retention_days,
                deliveries,
                attempts,
                emails,
                notifications,
            )
        return purged

    async def _remove_files(self, paths: list[str]) -> None:
        outbox = self._outbox_dir
        if outbox is None or not paths:
            return

        # Only files in our own outbox directory: a path in the database is not trusted to
        # point anywhere else, and another replica's files are not ours to see.
        def unlink() -> None:
            for path in (Path(p).resolve() for p in paths):
                if path.parent == outbox:
                    path.unlink(missing_ok=True)

        await asyncio.to_thread(unlink)

    def _finished(self, task: asyncio.Task[None]) -> None:
        full = len(self._in_flight) >= self._policy.max_in_flight
        self._in_flight.pop(task, None)
        if full:
            self._wake.set()  # a slot freed up: claim more without waiting for the poll

    async def _attempt(self, job: DeliveryJob, token: uuid.UUID) -> None:
        attempt_time = dt.datetime.now(dt.UTC)
        started = time.perf_counter()
        channel = self._channels.get(job.channel)
        record = True
        if job.endpoint_deleted:
            outcome, record = Outcome.fail(0, "endpoint deleted"), False
        elif channel is None:
            outcome = Outcome.fail(0, f"no deliverer for channel {job.channel}")
        else:
            try:
                outcome = await channel.deliver(job)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Our bug, not the receiver's: keep the delivery and try again later.
                log.exception("delivery %s failed unexpectedly", job.delivery_id)
                outcome = Outcome.retry(0, f"internal error: {type(exc).__name__}")
        latency_ms = (time.perf_counter() - started) * 1000.0
        status, next_time, error = next_step(
            self._policy, outcome, job.attempt_number, dt.datetime.now(dt.UTC)
        )
        record_delivery(
            CHANNEL_NAMES.get(job.channel, "other"), STATUS_NAMES[status], latency_ms / 1000.0
        )
        attempt = AttemptRecord(
            status=status,
            response_code=outcome.response_code,
            latency_ms=latency_ms,
            error=error,
            attempt_time=attempt_time,
            next_attempt_time=next_time,
        )
        try:
            held = await self._repo.finish_attempt(job, token, attempt, record=record)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # The claim expires and the delivery is attempted again: at-least-once.
            log.warning("could not record attempt of delivery %s: %r", job.delivery_id, exc)
            return
        if not held:
            log.info(
                "claim of delivery %s was lost before its attempt was recorded", job.delivery_id
            )
        log.debug(
            "delivery %s attempt %d: %s %s", job.delivery_id, job.attempt_number, status, error
        )
