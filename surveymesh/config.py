"""Typed configuration, read once from the environment.

Every process of the mesh (services, worker, CLI) reads the same variables, so one
environment describes one deployment. Defaults are the embedded, single-machine ones of
``surveymesh up``; setting ``DATABASE_URL`` or ``TEMPORAL_ADDRESS`` points a part at an
external server instead.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(RuntimeError):
    """A required setting is missing or malformed; raised at start, never mid-request."""


def _int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def _float(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def _bool(env: dict[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be a boolean (true/false), got {raw!r}")


def _list(env: dict[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    return tuple(item.strip() for item in raw.split(",") if item.strip())


@dataclass(frozen=True)
class Settings:
    """All settings of a SurveyMesh process.

    Attributes mirror environment variables (named in each comment). Use
    :meth:`from_env` to build one; tests build them directly.
    """

    data_dir: Path = Path(".surveymesh")  # SURVEYMESH_DATA_DIR
    bind_host: str = "localhost"  # SURVEYMESH_BIND_HOST: interface the servers listen on
    reporting_port: int = 50051  # SURVEYMESH_REPORTING_PORT
    delivery_port: int = 50052  # SURVEYMESH_DELIVERY_PORT
    notification_port: int = 50053  # SURVEYMESH_NOTIFICATION_PORT
    web_port: int = 8080  # SURVEYMESH_WEB_PORT
    metrics_port: int = 9464  # SURVEYMESH_METRICS_PORT: Prometheus /metrics; 0 turns it off
    # SURVEYMESH_TEMPORAL_METRICS_PORT: the worker's Temporal SDK metrics (Prometheus); 0: off
    temporal_metrics_port: int = 9465
    postgres_port: int = 55432  # SURVEYMESH_POSTGRES_PORT: the embedded PostgreSQL
    # Where peers are reached; default to the local ports above.
    reporting_address: str = ""  # SURVEYMESH_REPORTING_ADDRESS
    delivery_address: str = ""  # SURVEYMESH_DELIVERY_ADDRESS
    notification_address: str = ""  # SURVEYMESH_NOTIFICATION_ADDRESS
    public_url: str = ""  # SURVEYMESH_PUBLIC_URL: base of links in emails (the web viewer)
    database_url: str = ""  # DATABASE_URL: this process's own database
    db_pool_min: int = 1  # SURVEYMESH_DB_POOL_MIN
    db_pool_max: int = 10  # SURVEYMESH_DB_POOL_MAX
    temporal_port: int = 7233  # SURVEYMESH_TEMPORAL_PORT: the embedded dev server
    temporal_address: str = "localhost:7233"  # TEMPORAL_ADDRESS (default: the embedded one)
    temporal_namespace: str = "default"  # TEMPORAL_NAMESPACE
    temporal_ui_port: int = 8233  # SURVEYMESH_TEMPORAL_UI_PORT
    jwt_secret: str = ""  # SURVEYMESH_JWT_SECRET (else the data dir's jwt-secret file)
    jwt_audience: str = "surveymesh"  # SURVEYMESH_JWT_AUDIENCE
    jwt_issuer: str = "surveymesh"  # SURVEYMESH_JWT_ISSUER
    # SURVEYMESH_JWT_JWKS_FILE: a JWKS (RFC 7517) of verification keys, each with a `kid`;
    # several keys at once allow rotation. RS256/ES256 public keys in production.
    jwt_jwks_file: str = ""
    # SURVEYMESH_JWT_ALGORITHMS (comma list): the accepted `alg`s; default HS256 without a
    # JWKS file, else the JWKS keys' algorithms. `none` is never accepted.
    jwt_algorithms: tuple[str, ...] = field(default=())
    # SURVEYMESH_JWT_SIGNING_KEY_FILE: a private JWK (with `kid`) that this process signs
    # tokens with (the worker's service tokens, the CLI); default: the HS256 secret.
    jwt_signing_key_file: str = ""
    # TLS for the gRPC servers and client channels (paths to PEM files). With a cert and key
    # the servers speak TLS; with a CA as well, clients verify servers against it and
    # SURVEYMESH_TLS_CLIENT_AUTH=require makes servers demand client certificates (mTLS).
    tls_cert: str = ""  # SURVEYMESH_TLS_CERT
    tls_key: str = ""  # SURVEYMESH_TLS_KEY
    tls_ca: str = ""  # SURVEYMESH_TLS_CA
    tls_client_auth: str = ""  # SURVEYMESH_TLS_CLIENT_AUTH: "" (none) | require
    plaintext: bool = True  # SURVEYMESH_PLAINTEXT: false refuses to start without TLS
    # SURVEYMESH_PEER_LOAD_BALANCING: pick_first (one connection per peer channel) or
    # round_robin (a connection to every address the peer's name resolves to, calls spread
    # over them: for a Kubernetes headless Service, `dns:///delivery-headless:50052`).
    peer_load_balancing: str = "pick_first"
    # SURVEYMESH_PAYLOAD_KEYS: Temporal payload encryption keys, `kid:base64key` comma list
    # (the last one encrypts, all decrypt); default: a key file made in the data dir.
    payload_keys: str = ""
    # SURVEYMESH_SECRET_KEYS: keys that encrypt webhook signing secrets at rest, the same
    # `kid:base64key` comma list (the last one encrypts, all decrypt); default: a key file
    # made in the data dir (fine for one machine; replicas must share the setting).
    secret_keys: str = ""
    codec_port: int = 8234  # SURVEYMESH_CODEC_PORT: the Temporal remote-codec endpoint
    # SURVEYMESH_CODEC_CORS_ORIGINS (comma list): browser origins allowed to call the codec
    # endpoint (the Temporal UI).
    codec_cors_origins: tuple[str, ...] = ("http://localhost:8233",)
    # SURVEYMESH_REPORT_RATE: reports an organization may request per minute (per Reporting
    # replica); 0 turns the limit off.
    report_rate: float = 600.0
    grace_seconds: float = 10.0  # SURVEYMESH_GRACE_SECONDS: graceful shutdown window
    reflection: bool = True  # SURVEYMESH_REFLECTION: gRPC server reflection on/off
    worker_queues: tuple[str, ...] = field(default=())  # SURVEYMESH_WORKER_QUEUES (comma list)
    # SURVEYMESH_TASK_QUEUE_PREFIX: prepended to every task queue name, so several meshes
    # (or tests) can share one Temporal namespace without stealing each other's tasks.
    task_queue_prefix: str = ""
    ai_concurrency: int = 4  # SURVEYMESH_AI_CONCURRENCY: concurrent AI activities per worker
    # SURVEYMESH_SNAPSHOT_BATCH: responses per snapshot message from Delivery (1..5000).
    snapshot_batch: int = 2000
    smtp_url: str = ""  # SMTP_URL: smtp://user:pass@host:port; empty writes an outbox
    email_from: str = "SurveyMesh <reports@surveymesh.local>"  # SURVEYMESH_EMAIL_FROM
    # SURVEYMESH_ALLOW_PRIVATE_WEBHOOKS: true (the development default) lets webhooks reach
    # private, loopback and link-local addresses. Production MUST set false (deploy/ does):
    # then URLs are refused at registration and re-resolved and refused at every attempt,
    # so a webhook cannot reach cloud metadata or internal services (SSRF).
    allow_private_webhooks: bool = True
    openai_api_key: str = ""  # OPENAI_API_KEY: empty uses the local analyzers
    openai_base_url: str = ""  # OPENAI_BASE_URL
    openai_model: str = "gpt-4o-mini"  # SURVEYMESH_OPENAI_MODEL
    openai_timeout: float = 60.0  # SURVEYMESH_OPENAI_TIMEOUT: seconds per AI request
    openai_max_retries: int = 2  # SURVEYMESH_OPENAI_MAX_RETRIES: client retries (429, 5xx)
    # SURVEYMESH_DEV_MODE: development conveniences, e.g. the web viewer's ?token= sign-in
    # links. Off unless set; `surveymesh up` sets it for the mesh it runs.
    dev_mode: bool = False
    # SURVEYMESH_RENDER_PROCESSES: worker processes rendering HTML/PDF/CSV (0: threads).
    render_processes: int = 2
    log_format: str = "text"  # SURVEYMESH_LOG_FORMAT: text | json
    log_level: str = "INFO"  # SURVEYMESH_LOG_LEVEL

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Reads the settings from ``env`` (default: ``os.environ``).

        Raises:
            ConfigError: a value is malformed.
        """
        e = dict(os.environ if env is None else env)
        d = cls()
        queues = tuple(
            q.strip() for q in e.get("SURVEYMESH_WORKER_QUEUES", "").split(",") if q.strip()
        )
        log_format = e.get("SURVEYMESH_LOG_FORMAT", d.log_format)
        if log_format not in {"text", "json"}:
            raise ConfigError(f"SURVEYMESH_LOG_FORMAT must be text or json, got {log_format!r}")
        tls_client_auth = e.get("SURVEYMESH_TLS_CLIENT_AUTH", "").lower()
        if tls_client_auth not in {"", "none", "require"}:
            raise ConfigError(
                f"SURVEYMESH_TLS_CLIENT_AUTH must be 'require' or empty, got {tls_client_auth!r}"
            )
        tls_client_auth = "" if tls_client_auth == "none" else tls_client_auth
        balancing = e.get("SURVEYMESH_PEER_LOAD_BALANCING") or d.peer_load_balancing
        if balancing not in {"pick_first", "round_robin"}:
            raise ConfigError(
                "SURVEYMESH_PEER_LOAD_BALANCING must be pick_first or round_robin, "
                f"got {balancing!r}"
            )
        return cls(
            data_dir=Path(e.get("SURVEYMESH_DATA_DIR") or d.data_dir),
            bind_host=e.get("SURVEYMESH_BIND_HOST") or d.bind_host,
            reporting_port=_int(e, "SURVEYMESH_REPORTING_PORT", d.reporting_port),
            delivery_port=_int(e, "SURVEYMESH_DELIVERY_PORT", d.delivery_port),
            notification_port=_int(e, "SURVEYMESH_NOTIFICATION_PORT", d.notification_port),
            web_port=_int(e, "SURVEYMESH_WEB_PORT", d.web_port),
            metrics_port=_int(e, "SURVEYMESH_METRICS_PORT", d.metrics_port),
            temporal_metrics_port=_int(
                e, "SURVEYMESH_TEMPORAL_METRICS_PORT", d.temporal_metrics_port
            ),
            postgres_port=_int(e, "SURVEYMESH_POSTGRES_PORT", d.postgres_port),
            reporting_address=e.get("SURVEYMESH_REPORTING_ADDRESS", ""),
            delivery_address=e.get("SURVEYMESH_DELIVERY_ADDRESS", ""),
            notification_address=e.get("SURVEYMESH_NOTIFICATION_ADDRESS", ""),
            public_url=e.get("SURVEYMESH_PUBLIC_URL", ""),
            database_url=e.get("DATABASE_URL", ""),
            db_pool_min=_int(e, "SURVEYMESH_DB_POOL_MIN", d.db_pool_min),
            db_pool_max=_int(e, "SURVEYMESH_DB_POOL_MAX", d.db_pool_max),
            temporal_port=_int(e, "SURVEYMESH_TEMPORAL_PORT", d.temporal_port),
            temporal_address=e.get("TEMPORAL_ADDRESS")
            or f"localhost:{_int(e, 'SURVEYMESH_TEMPORAL_PORT', d.temporal_port)}",
            temporal_namespace=e.get("TEMPORAL_NAMESPACE") or d.temporal_namespace,
            temporal_ui_port=_int(e, "SURVEYMESH_TEMPORAL_UI_PORT", d.temporal_ui_port),
            jwt_secret=e.get("SURVEYMESH_JWT_SECRET", ""),
            jwt_audience=e.get("SURVEYMESH_JWT_AUDIENCE") or d.jwt_audience,
            jwt_issuer=e.get("SURVEYMESH_JWT_ISSUER") or d.jwt_issuer,
            jwt_jwks_file=e.get("SURVEYMESH_JWT_JWKS_FILE", ""),
            jwt_algorithms=_list(e, "SURVEYMESH_JWT_ALGORITHMS", d.jwt_algorithms),
            jwt_signing_key_file=e.get("SURVEYMESH_JWT_SIGNING_KEY_FILE", ""),
            tls_cert=e.get("SURVEYMESH_TLS_CERT", ""),
            tls_key=e.get("SURVEYMESH_TLS_KEY", ""),
            tls_ca=e.get("SURVEYMESH_TLS_CA", ""),
            tls_client_auth=tls_client_auth,
            plaintext=_bool(e, "SURVEYMESH_PLAINTEXT", d.plaintext),
            peer_load_balancing=balancing,
            payload_keys=e.get("SURVEYMESH_PAYLOAD_KEYS", ""),
            secret_keys=e.get("SURVEYMESH_SECRET_KEYS", ""),
            codec_port=_int(e, "SURVEYMESH_CODEC_PORT", d.codec_port),
            codec_cors_origins=_list(e, "SURVEYMESH_CODEC_CORS_ORIGINS", d.codec_cors_origins),
            report_rate=_float(e, "SURVEYMESH_REPORT_RATE", d.report_rate),
            grace_seconds=_float(e, "SURVEYMESH_GRACE_SECONDS", d.grace_seconds),
            reflection=_bool(e, "SURVEYMESH_REFLECTION", d.reflection),
            worker_queues=queues,
            task_queue_prefix=e.get("SURVEYMESH_TASK_QUEUE_PREFIX", ""),
            ai_concurrency=_int(e, "SURVEYMESH_AI_CONCURRENCY", d.ai_concurrency),
            snapshot_batch=_int(e, "SURVEYMESH_SNAPSHOT_BATCH", d.snapshot_batch),
            smtp_url=e.get("SMTP_URL", ""),
            email_from=e.get("SURVEYMESH_EMAIL_FROM") or d.email_from,
            allow_private_webhooks=_bool(
                e, "SURVEYMESH_ALLOW_PRIVATE_WEBHOOKS", d.allow_private_webhooks
            ),
            openai_api_key=e.get("OPENAI_API_KEY", ""),
            openai_base_url=e.get("OPENAI_BASE_URL", ""),
            openai_model=e.get("SURVEYMESH_OPENAI_MODEL") or d.openai_model,
            openai_timeout=_float(e, "SURVEYMESH_OPENAI_TIMEOUT", d.openai_timeout),
            openai_max_retries=_int(e, "SURVEYMESH_OPENAI_MAX_RETRIES", d.openai_max_retries),
            dev_mode=_bool(e, "SURVEYMESH_DEV_MODE", d.dev_mode),
            render_processes=_int(e, "SURVEYMESH_RENDER_PROCESSES", d.render_processes),
            log_format=log_format,
            log_level=(e.get("SURVEYMESH_LOG_LEVEL") or d.log_level).upper(),
        )

    def peer(self, service: str) -> str:
        """The address of a peer service (``reporting``, ``delivery`` or ``notification``)."""
        explicit = getattr(self, f"{service}_address")
        return explicit or f"localhost:{getattr(self, f'{service}_port')}"

    def task_queue(self, queue: str) -> str:
        """The actual name of a task queue (``reporting-quick`` etc.) in this deployment."""
        return self.task_queue_prefix + queue

    @property
    def viewer_url(self) -> str:
        """Base URL of the web viewer, used in links sent to people."""
        return self.public_url or f"http://localhost:{self.web_port}"

    def require_database_url(self) -> str:
        """Returns ``DATABASE_URL`` or fails with a clear message."""
        if not self.database_url:
            raise ConfigError(
                "DATABASE_URL is not set: point it at this service's PostgreSQL database "
                "(surveymesh up sets it for every child process)"
            )
        return self.database_url

    def signing_secret(self) -> str:
        """The HS256 secret tokens are signed with.

        ``SURVEYMESH_JWT_SECRET`` wins; otherwise the data dir's ``jwt-secret`` file, which
        is created (mode 0600) on first use so that a development mesh works with no set-up.
        """
        if self.jwt_secret:
            return self.jwt_secret
        path = self.data_dir / "jwt-secret"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            # O_EXCL: when two processes race to create it, exactly one secret wins.
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "w") as f:
                    f.write(secrets.token_urlsafe(48))
        secret = path.read_text().strip()
        if not secret:
            raise ConfigError(f"{path} is empty; delete it to have a new secret made")
        return secret
