"""Email notifications: rendered from Jinja2 templates, sent over SMTP or kept in an outbox.

With ``SMTP_URL`` (``smtp://[user:pass@]host:port``, or ``smtps://`` for implicit TLS) the
message goes to that server with ``aiosmtplib``. Without one it is stored in the
``email_outbox`` table and written as a ``.eml`` file under ``<data_dir>/outbox/`` that a
developer can open with any mail client.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import aiosmtplib
import jinja2

from notification_svc.dispatcher import Outcome
from notification_svc.repository import DeliveryJob, Repository
from surveymesh.config import ConfigError

log = logging.getLogger(__name__)

_TEMPLATES = Path(__file__).parent / "templates"


@dataclass(frozen=True)
class SmtpTarget:
    """Where and how to connect to the SMTP server."""

    hostname: str
    port: int
    username: str | None
    password: str | None
    use_tls: bool


def parse_smtp_url(url: str) -> SmtpTarget:
    """Parses ``smtp://[user:pass@]host[:port]`` (port 25) or ``smtps://...`` (port 465).

    Raises:
        ConfigError: the URL is malformed.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps"):
        raise ConfigError(f"SMTP_URL must start with smtp:// or smtps://, got {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError("SMTP_URL has a malformed port") from None
    if not parts.hostname:
        raise ConfigError("SMTP_URL must name a host")
    tls = parts.scheme == "smtps"
    return SmtpTarget(
        hostname=parts.hostname,
        port=port or (465 if tls else 25),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        use_tls=tls,
    )


@dataclass(frozen=True)
class RenderedEmail:
    """An email's subject and bodies."""

    subject: str
    text: str
    html: str
    link: str


class EmailRenderer:
    """Renders notification emails; the HTML template is autoescaped.

    Args:
        viewer_url: Base URL that relative links (``/reports/...``) are resolved against.
    """

    def __init__(self, viewer_url: str) -> None:
        self._base = viewer_url.rstrip("/") + "/"
        self._env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(_TEMPLATES),
            autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",)),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
        )

    def render(self, job: DeliveryJob) -> RenderedEmail:
        """Subject, plain-text and HTML body of a notification."""
        link = urljoin(self._base, job.link) if job.link else ""
        values = {"title": job.title, "body": job.body, "link": link, "org_id": job.org_id}
        return RenderedEmail(
            subject=job.title,
            text=self._env.get_template("notification.txt.j2").render(values),
            html=self._env.get_template("notification.html.j2").render(values),
            link=link,
        )


def build_message(
    rendered: RenderedEmail, *, sender: str, to: str, message_id: str
) -> EmailMessage:
    """A multipart/alternative message. The Message-ID is stable per delivery, so a
    retry the receiver already got can be recognised as a duplicate."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = rendered.subject
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = f"<{message_id}@surveymesh>"
    msg.set_content(rendered.text)
    msg.add_alternative(rendered.html, subtype="html")
    return msg


class Mailer:
    """Makes one email attempt.

    Args:
        repo: The repository (for the outbox).
        renderer: Renders subject and bodies.
        sender: The ``From`` address.
        smtp: The SMTP server, or None to use the outbox.
        outbox_dir: Where ``.eml`` files go when there is no SMTP server.
        timeout: Seconds for one SMTP conversation.
    """

    def __init__(
        self,
        repo: Repository,
        renderer: EmailRenderer,
        *,
        sender: str,
        smtp: SmtpTarget | None,
        outbox_dir: Path,
        timeout: float,
    ) -> None:
        self._repo = repo
        self._renderer = renderer
        self._sender = sender
        self._smtp = smtp
        self._outbox_dir = outbox_dir
        self._timeout = timeout

    async def deliver(self, job: DeliveryJob) -> Outcome:
        """Sends (or stores) the email of a delivery."""
        rendered = self._renderer.render(job)
        message = build_message(
            rendered, sender=self._sender, to=job.email, message_id=job.message_id
        )
        if self._smtp is None:
            return await self._store(job, rendered, message)
        return await self._send(message)

    async def _send(self, message: EmailMessage) -> Outcome:
        smtp = self._smtp
        assert smtp is not None
        try:
            await aiosmtplib.send(
                message,
                hostname=smtp.hostname,
                port=smtp.port,
                username=smtp.username,
                password=smtp.password,
                use_tls=smtp.use_tls,
                timeout=self._timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            code = codes[0] if codes else 550
            if any(400 <= c < 500 for c in codes):
                return Outcome.retry(code, "recipient temporarily refused")
            return Outcome.fail(code, "recipient refused")
        except aiosmtplib.SMTPResponseException as exc:
            # 4xx is "try again later" in SMTP; 5xx is final.
            if 400 <= exc.code < 500:
                return Outcome.retry(exc.code, f"SMTP {exc.code}: {exc.message}"[:500])
            return Outcome.fail(exc.code, f"SMTP {exc.code}: {exc.message}"[:500])
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            return Outcome.retry(0, f"SMTP connection failed: {type(exc).__name__}: {exc}"[:500])
        return Outcome.success(250)

    async def _store(
        self, job: DeliveryJob, rendered: RenderedEmail, message: EmailMessage
    ) -> Outcome:
        raw = message.as_string()
        stamp = job.create_time.strftime("%Y%m%dT%H%M%S")
        path = self._outbox_dir / f"{stamp}-{job.delivery_id}.eml"
        await asyncio.to_thread(_write_file, path, raw)
        await self._repo.store_outbox_email(
            job,
            to_address=job.email,
            subject=rendered.subject,
            text_body=rendered.text,
            html_body=rendered.html,
            raw_message=raw,
            eml_path=str(path),
        )
        log.info("email to %s kept in the outbox: %s", job.email, path)
        return Outcome.success(0)


def _write_file(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)  # atomic: a reader never sees half a message
