"""Where every piece of the local stack listens, and the environment each service gets from it.

One :class:`StackConfig` describes a whole stack, so ``make up`` (fixed, well-known ports) and the
integration tests (free ports, a temp data dir, a topic prefix per run) share the same launcher.
The services only ever see URLs through :func:`service_env`, exactly as in production.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factura.common.settings import DEVSTACK_ENV

INFRA = ("kafka", "mongo", "s3", "smtp", "sms", "tsa")
SERVICES = ("ingest", "renderer", "email-sender", "sms-sender", "scheduler", "audit")
ALL = INFRA + SERVICES
#: Processes a stack may also run (started on request, not by ``up``'s default set): ports, pid files.
EXTRAS = ("prometheus",)
#: Second ports of a process (each a ``<name>_port`` field): the SMTP capture's Mailpit-compatible search API.
SECOND_PORTS = ("smtp-api",)
HOST = "127.0.0.1"
#: Consumers' fetch wait on the local broker. Tansu answers a fetch late (it does not wake a waiting
#: fetch when data arrives): per hop p50 138 ms at Kafka's 500 ms, 21 ms at 100, 10 ms at 20. Each
#: fetch costs Tansu CPU per partition, so only the delivery path (ERP → SMTP) polls fast; audit and
#: the scheduler, off that path and reading many topics, keep 500 ms. Idle stack, Tansu's CPU: 64 %
#: of a core with every consumer at 50 ms, 19 % with this split, 9 % with all at 500 ms.
FETCH_MAX_WAIT_MS = 100
SLOW_FETCH_MAX_WAIT_MS = {"audit": 500, "scheduler": 500}
#: Hits on a tracking link this soon after sending count as a mail gateway's scan (production 10 s):
#: short here, so a demo or a test can open a mail "as a person" a few seconds after it arrives.
SCANNER_WINDOW_S = 3.0
#: Sample tenant configs (branding, e-invoice, packaging) shipped with the devstack.
TENANTS_DIR = Path(__file__).resolve().parents[3] / "tenants"

_USES_MONGO = frozenset({"ingest", "renderer", "email-sender", "sms-sender", "scheduler", "audit"})
_USES_S3 = frozenset({"ingest", "renderer", "email-sender", "audit"})  # audit: evidence bundles


def _attr(name: str) -> str:
    return name.replace("-", "_") + "_port"


@dataclass
class StackConfig:
    data_dir: Path = field(default_factory=lambda: Path(".data"))
    topic_prefix: str = ""
    mongo_database: str = "factura"
    kafka_port: int = 9092
    mongo_port: int = 27017
    s3_port: int = 9000
    smtp_port: int = 2525
    smtp_api_port: int = 8025  # Mailpit's HTTP port
    sms_port: int = 8090
    tsa_port: int = 3180
    ingest_port: int = 8101
    renderer_port: int = 8102
    email_sender_port: int = 8103
    sms_sender_port: int = 8104
    scheduler_port: int = 8105
    audit_port: int = 8106
    prometheus_port: int = 9090
    sms_account_sid: str = "AC" + "factura".ljust(32, "0")
    # Every fixed secret carries the devstack marker (factura.common.settings.DEVSTACK_MARKER): the
    # services refuse such values unless FACTURA_DEVSTACK=1, which only service_env sets.
    sms_auth_token: str = "devstack-only-sms-auth-token"
    s3_bucket: str = "factura-documents"
    s3_access_key_id: str = "devstack-only-s3-access-key"
    s3_secret_access_key: str = "devstack-only-s3-secret-key"
    bounce_domain: str = "bounce.test"
    link_secret: str = "devstack-only-link-secret"
    pseudonym_secret: str = "devstack-only-pseudonym-secret"
    webhook_secret: str = "devstack-only-webhook-secret"
    admin_token: str = "devstack-only-admin-token"
    # Every tenant's PII KEK is derived from it, shared by audit, the senders and the scheduler
    # (customer_keys is shared).
    pii_secret: str = "devstack-only-pii-kek-secret-of-32-bytes"
    push_project: str = "factura-dev"
    tenants_dir: Path = field(default_factory=lambda: TENANTS_DIR)

    def __post_init__(self) -> None:
        # Children get absolute paths, and pid ownership checks compare this exact string.
        self.data_dir = Path(self.data_dir).resolve()

    @classmethod
    def free_ports(cls, data_dir: Path, topic_prefix: str = "", mongo_database: str = "factura") -> StackConfig:
        """A config on ports that are free right now, so parallel test runs never collide."""
        with ExitStack() as held:
            # Keep every socket bound until all are picked so no port is handed out twice.
            names = ALL + EXTRAS + SECOND_PORTS
            socks = [held.enter_context(socket.socket()) for _ in names]
            for s in socks:
                s.bind((HOST, 0))
            ports = {_attr(name): s.getsockname()[1] for name, s in zip(names, socks, strict=True)}
        return cls(data_dir=data_dir, topic_prefix=topic_prefix, mongo_database=mongo_database, **ports)

    def port(self, name: str) -> int:
        value: int = getattr(self, _attr(name))
        return value

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def secrets_dir(self) -> Path:
        """Secrets the devstack makes for itself on first start (never used outside it)."""
        return self.data_dir / "secrets"

    @property
    def audit_signing_key(self) -> Path:
        return self.secrets_dir / "audit-signing-key.pem"

    @property
    def audit_api_key_file(self) -> Path:
        """An admin API key (every tenant) for the audit and ingest APIs, created once audit is up."""
        return self.secrets_dir / "audit-api-key"

    def audit_api_key(self) -> str:
        return self.audit_api_key_file.read_text().strip()

    @property
    def maildir(self) -> Path:
        return self.data_dir / "maildir"

    @property
    def mongo_dir(self) -> Path:
        """nx-27017's data: one SQLite file per database."""
        return self.data_dir / "mongo"

    @property
    def sms_dir(self) -> Path:
        return self.data_dir / "sms"

    @property
    def pki_dir(self) -> Path:
        """The local TSA's test PKI (root CA, TSA certificate), made once (factura.devstack.tsa)."""
        return self.data_dir / "pki"

    @property
    def signing_secrets_dir(self) -> Path:
        """Per-tenant signing credentials: ``<tenant>/signing.p12`` and ``signing.pass`` (devstack only)."""
        return self.secrets_dir / "signing"

    @property
    def tsa_url(self) -> str:
        """The local RFC 3161 TSA (``/tsa``; ``/tsa/<mode>`` answers like a broken one)."""
        return f"http://{HOST}:{self.tsa_port}/tsa"

    @property
    def kafka_bootstrap(self) -> str:
        return f"{HOST}:{self.kafka_port}"

    @property
    def mongo_url(self) -> str:
        return f"mongodb://{HOST}:{self.mongo_port}"

    @property
    def s3_url(self) -> str:
        return f"http://{HOST}:{self.s3_port}"

    @property
    def smtp_api_url(self) -> str:
        """Base URL of the SMTP capture's Mailpit-compatible search API (``/api/v1/search``)."""
        return f"http://{HOST}:{self.smtp_api_port}"

    @property
    def sms_url(self) -> str:
        """Base URL of the Twilio-shaped capture server (``/_capture/messages`` lists what it got)."""
        return f"http://{HOST}:{self.sms_port}"

    def service_url(self, name: str) -> str:
        """Base URL of a service's HTTP face, e.g. ``service_url("audit")``."""
        return f"http://{HOST}:{self.port(name)}"

    def save(self) -> None:
        """Remember the config of a detached stack so ``status`` probes the ports ``up`` used."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        data = dataclasses.asdict(self) | {"data_dir": str(self.data_dir), "tenants_dir": str(self.tenants_dir)}
        (self.run_dir / "stack.json").write_text(json.dumps(data, indent=2))

    @classmethod
    def load(cls, data_dir: Path) -> StackConfig | None:
        path = Path(data_dir) / "run" / "stack.json"
        if not path.exists():
            return None
        data: dict[str, Any] = json.loads(path.read_text())
        return cls(**data | {"data_dir": Path(data["data_dir"]), "tenants_dir": Path(data["tenants_dir"])})


def env_prefix(name: str) -> str:
    """The prefix of a service's settings in the environment (its ``ServiceSettings.env_prefix``)."""
    return f"FACTURA_{name.upper().replace('-', '_')}_"


def service_env(name: str, cfg: StackConfig) -> dict[str, str]:
    """The settings (``FACTURA_<SERVICE>_...``) that point one service at this stack."""
    if name not in SERVICES:
        raise ValueError(f"unknown service {name!r}; expected one of {', '.join(SERVICES)}")
    p = env_prefix(name)
    env = {
        p + "KAFKA__BOOTSTRAP_SERVERS": cfg.kafka_bootstrap,
        p + "KAFKA__TOPIC_PREFIX": cfg.topic_prefix,
        p + "KAFKA__IDEMPOTENCE": "false",  # Tansu cannot do InitProducerId
        # Tansu holds every group join for half the session timeout (3 s here); rebalances wait at most 2 s.
        p + "KAFKA__REBALANCE_TIMEOUT_MS": "2000",
        p + "KAFKA__SESSION_TIMEOUT_MS": "6000",
        # Tansu wedges a group when a LeaveGroup arrives while another member joins (consumer.py, _stay_in_group).
        p + "KAFKA__LEAVE_GROUP_ON_STOP": "false",
        p + "KAFKA__FETCH_MAX_WAIT_MS": str(SLOW_FETCH_MAX_WAIT_MS.get(name, FETCH_MAX_WAIT_MS)),
        p + "KAFKA__RETRY_MAX_S": "2",
        p + "HTTP__PORT": str(cfg.port(name)),
        p + "LOG_LEVEL": "INFO",
        DEVSTACK_ENV: "1",  # allows the devstack-only secrets below; nothing else sets it
    }
    if name in _USES_MONGO:
        env |= {p + "MONGO__URL": cfg.mongo_url, p + "MONGO__DATABASE": cfg.mongo_database}
    if name in _USES_S3:
        env |= {
            p + "S3__ENDPOINT_URL": cfg.s3_url,
            p + "S3__BUCKET": cfg.s3_bucket,
            # moto takes any key; production leaves these unset and uses the AWS credential chain
            p + "S3__ACCESS_KEY_ID": cfg.s3_access_key_id,
            p + "S3__SECRET_ACCESS_KEY": cfg.s3_secret_access_key,
        }
    if name == "email-sender":
        env |= {
            p + "SMTP__HOST": HOST,
            p + "SMTP__PORT": str(cfg.smtp_port),
            p + "SMTP__SECURITY": "none",  # the capture server on loopback; see docs/operations.md for TLS
            p + "SMTP__LOOKUP_URL": cfg.smtp_api_url,  # asked before a retried delivery sends again
            p + "WEBHOOKS__HMAC_SECRETS": json.dumps([cfg.webhook_secret]),
            p + "ADMIN__TOKENS": json.dumps([cfg.admin_token]),
        }
    if name == "sms-sender":
        env |= {
            p + "PROVIDER__BASE_URL": cfg.sms_url,
            p + "PROVIDER__ACCOUNT_SID": cfg.sms_account_sid,
            p + "PROVIDER__AUTH_TOKEN": cfg.sms_auth_token,
            p + "VOICE__BASE_URL": cfg.sms_url,
            p + "VOICE__ACCOUNT_SID": cfg.sms_account_sid,
            p + "VOICE__AUTH_TOKEN": cfg.sms_auth_token,
            p + "PUSH__BASE_URL": cfg.sms_url,
            p + "PUSH__PROJECT_ID": cfg.push_project,
            p + "PUSH__ACCESS_TOKEN": cfg.sms_auth_token,  # the capture server takes the account token
            p + "STATUS_CALLBACK_URL": cfg.service_url("sms-sender") + "/v1/webhooks/sms-status",
        }
    if name == "scheduler":
        env[p + "TICK_SECONDS"] = "1"
        env[p + "HELPDESK__SECRET"] = cfg.sms_auth_token  # the capture server's helpdesk checks it
    if name in ("ingest", "renderer", "email-sender", "sms-sender", "scheduler", "audit"):
        env[p + "TENANTS_DIR"] = str(cfg.tenants_dir)
    if name in ("renderer", "email-sender", "sms-sender"):
        env |= {
            p + "LINKS__SECRET": cfg.link_secret,
            p + "LINKS__PSEUDONYM_SECRET": cfg.pseudonym_secret,
            p + "LINKS__BASE_URL": cfg.service_url("renderer"),
        }
    if name in ("email-sender", "sms-sender", "scheduler", "audit"):
        env[p + "PII__SECRET"] = cfg.pii_secret
    if name == "renderer":
        env |= {
            p + "TSA__URL": cfg.tsa_url,
            p + "TSA__CA_FILE": str(cfg.pki_dir / "root.pem"),
            p + "SIGNING__SECRETS_DIR": str(cfg.signing_secrets_dir),
            p + "TRACKING__SCANNER_WINDOW_S": str(SCANNER_WINDOW_S),
        }
    if name == "audit":
        env[p + "SIGNING_KEY_FILE"] = str(cfg.audit_signing_key)
        env[p + "CHECKPOINT_INTERVAL_S"] = "5"
    if name == "ingest":
        env[p + "ALLOW_TEST_EMAIL_DOMAINS"] = "true"  # sample customers live under the reserved .test TLD
    return env


#: Between a service's name and a replica's index in a process name (``renderer.1``): its pid file,
#: log file and process marker. Service names have no dot, so a replica never looks like a service.
REPLICA_SEPARATOR = "."


def replica_process(name: str, index: int) -> str:
    """The process name of replica ``index`` of service ``name``; replica 0 is the service's own process."""
    if name not in SERVICES:
        raise ValueError(f"only services have replicas: {name!r} is not one of {', '.join(SERVICES)}")
    if index < 0:
        raise ValueError(f"a replica index is 0 (the service itself) or more, not {index}")
    return name if index == 0 else f"{name}{REPLICA_SEPARATOR}{index}"


def parse_process(process: str) -> tuple[str, int]:
    """``renderer.1`` -> (``renderer``, 1); any other process name is its own replica 0."""
    name, _, index = process.partition(REPLICA_SEPARATOR)
    return name, int(index) if index else 0


def replica_env(name: str, index: int, cfg: StackConfig, http_port: int) -> dict[str, str]:
    """:func:`service_env` for another process of the same service on this machine: the same group,
    topics and stores, and its own copy of what two processes on one host would collide on.

    * the HTTP port (``/readyz``, ``/metrics``, the service's API);
    * ingest's SFTP drop, which listens on one fixed port and runs in exactly one replica: off;
    * the scheduler's sweep-lease owner: unique per start, named after the replica so the lease
      document says which one sweeps (one inherited from the caller's environment would be shared);
    * the renderer's pool: the first replica already has one render process per core, so this
      one gets a single process instead of doubling the CPU-bound processes on the same cores.
    """
    p = env_prefix(name)
    env = service_env(name, cfg) | {p + "HTTP__PORT": str(http_port)}
    if name == "ingest":
        env[p + "SFTP__ENABLED"] = "false"
    if name == "scheduler":
        env[p + "REPLICA_ID"] = f"{socket.gethostname()}/{replica_process(name, index)}/{uuid.uuid4().hex[:8]}"
    if name == "renderer":
        env[p + "WORKERS"] = "1"
    return env
