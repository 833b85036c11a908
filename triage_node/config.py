"""The one configuration model: config.yaml, overridden by ``TRIAGE_NODE__SECTION__KEY`` environment variables.

Validated once at start-up into frozen pydantic models. ``load_config`` raises ``ConfigError`` carrying every problem
with its key path (``scp.port: must be between 1 and 65535, got 70000``); ``triage-node check-config`` prints them.
"""

from __future__ import annotations

import logging
import os
import re
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "TRIAGE_NODE__"

log = logging.getLogger(__name__)


def _between(lo: float, hi: float) -> AfterValidator:
    def check(v: float) -> float:
        if not lo <= v <= hi:
            raise ValueError(f"must be between {lo:g} and {hi:g}, got {v:g}")
        return v

    return AfterValidator(check)


def _ae_title(v: str) -> str:
    if not 1 <= len(v.strip()) <= 16 or "\\" in v or any(ord(c) < 32 for c in v):
        raise ValueError(f"must be 1-16 printable characters without backslash, got {v!r}")
    return v.strip()


def _regex(v: str | None) -> str | None:
    if v is not None:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"is not a valid regular expression ({exc}), got {v!r}") from exc
    return v


Port = Annotated[int, _between(1, 65535)]
AETitle = Annotated[str, AfterValidator(_ae_title)]
Regex = Annotated[str | None, AfterValidator(_regex)]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Pipeline(str, Enum):
    """The processing pipelines a routing rule can pick."""

    CT_HEAD = "ct_head"
    MR_SWI = "mr_swi"
    MR_DWI = "mr_dwi"


class Caller(Frozen):
    """A calling AE allowed to associate; ``host`` (an IP address) pins it to one peer when given."""

    ae_title: AETitle
    host: str | None = None


class TLS(Frozen):
    enabled: bool = False
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    require_client_cert: bool = False

    @model_validator(mode="after")
    def _files(self) -> TLS:
        if self.enabled and (self.cert_file is None or self.key_file is None):
            raise ValueError("tls.enabled needs cert_file and key_file")
        if self.require_client_cert and self.ca_file is None:
            raise ValueError("require_client_cert needs ca_file (the CA that signs client certificates)")
        return self


class SCP(Frozen):
    ae_title: AETitle = "TRIAGE_NODE"
    host: str = "127.0.0.1"
    port: Port = 11112
    max_pdu: Annotated[int, _between(0, 2**32 - 1)] = 262144
    acse_timeout_s: Annotated[float, _between(1, 3600)] = 30
    dimse_timeout_s: Annotated[float, _between(1, 3600)] = 60
    network_timeout_s: Annotated[float, _between(1, 3600)] = 60
    max_associations: Annotated[int, _between(1, 1000)] = 16
    require_called_ae: bool = True
    allowed_callers: tuple[Caller, ...] = ()
    tls: TLS = TLS()
    # How associations are received: "fast" (receive/fast/: event-driven associations, storage read straight off the
    # socket; needs a pynetdicom version it supports, else "stock" with a WARNING) or "stock" (plain pynetdicom).
    transport: Literal["stock", "fast"] = "fast"
    # SO_REUSEPORT: several `serve --roles receive` processes on one machine share scp.port (each commits its own
    # instances to the shared database); the kernel spreads associations over them.
    reuse_port: bool = False

    @model_validator(mode="before")
    @classmethod
    def _fast_lane_alias(cls, data: Any) -> Any:
        """``fast_lane`` (before ``transport``) still works: true is ``fast``, false is ``stock``; ``transport``, when
        also given (e.g. by an environment override), wins."""
        if not isinstance(data, dict) or "fast_lane" not in data:
            return data
        data = dict(data)
        fast_lane = data.pop("fast_lane")
        if not isinstance(fast_lane, bool):
            raise ValueError(f"fast_lane: must be true or false, got {fast_lane!r} (it is deprecated: use transport)")
        if "transport" in data:
            log.warning("scp.fast_lane is deprecated and ignored: scp.transport is set")
        else:
            data["transport"] = "fast" if fast_lane else "stock"
            log.warning("scp.fast_lane is deprecated: use scp.transport: %s", data["transport"])
        return data


class Storage(Frozen):
    spool_dir: Path = Path("var/spool")
    database_url: str = "sqlite:///var/triage-node.db"
    min_free_mb: Annotated[int, _between(0, 10**9)] = 500
    retention_days: Annotated[float, _between(0, 36500)] | None = 30
    # Nodes sharing one database: a claimed job or outbox row is held this long past the last heartbeat (every
    # lease_s / 6); when its node dies, another takes it over after this.
    lease_s: Annotated[float, _between(2, 3600)] = 30


class Match(Frozen):
    """Conditions on a series; every given condition must hold. Patterns are case-insensitive regexes searched (not
    anchored) in the attribute; lists match when any item matches.

    Series conditions look at the first instance: ``modality``, ``body_part``, ``study_description``,
    ``series_description``, ``protocol_name`` and ``series_description_excludes`` (the series is not picked when this
    pattern is found). Image conditions look at each image: ``sequence_name``, ``image_type_contains`` (all of these
    values), ``image_type_excludes`` (none of these values) and ``min_b_value``; the series matches when one of its
    images meets them, and only such images are read. ``any_of``: at least one of these alternatives must hold too
    (for the same image)."""

    modality: tuple[str, ...] = ()
    body_part: Regex = None
    study_description: Regex = None
    series_description: Regex = None
    series_description_excludes: Regex = None
    protocol_name: Regex = None
    sequence_name: Regex = None
    image_type_contains: tuple[str, ...] = ()
    image_type_excludes: tuple[str, ...] = ()
    min_b_value: float | None = None
    any_of: tuple[Match, ...] = ()


class RoutingRule(Frozen):
    name: str
    pipeline: Pipeline
    match: Match = Match()


class CountRule(Frozen):
    """Complete a series as soon as it holds ``count`` instances (when the series itself does not say its size)."""

    match: Match = Match()
    count: Annotated[int, _between(1, 100000)]


# Default routing vocabulary (config.yaml repeats these rules verbatim; a test keeps the two identical).
HEAD_PATTERN = r"head|brain|skull|cran|neuro|kopf|cerebr|schadel|schaedel"
# SWI / T2*: the cmb model reads magnitude images only. Phase, real / imaginary, minimum- and maximum-intensity
# projections and localizers are excluded by ImageType (Siemens P, MNIP; Philips PHASE MAP; GE's private type)...
SWI_IMAGE_EXCLUDES = (
    "P", "PHASE", "PHASE MAP", "R", "REAL", "I", "IMAGINARY", "MNIP", "MIN IP", "MIN_IP", "MINIP", "MIP", "MAX IP",
    "MAX_IP", "PROJECTION IMAGE", "LOCALIZER",
)  # fmt: skip
# ...and by description, with the T1 / angiography gradient-echo series a bare "gre" or "ffe" would otherwise catch.
SWI_DESCRIPTION_EXCLUDES = (
    r"(^|[^a-z])(pha|phase|qsm)([^a-z]|$)|(^|[^a-z])(m|min|mn)[ _-]?ip([^a-z]|$)|t1(?!\d)|mprage|spgr|bravo|tof|angio"
    r"|localizer|scout"
)
SWI_DESCRIPTION = r"swi|swan|susc|venbold|t2\*|t2star|t2_star|hemo|(^|[^a-z])(gre|ffe)([^a-z]|$)"
# DWI: the infarct model reads b=1000 trace images; ADC, exponential ADC, FA and tensor maps are excluded.
DWI_IMAGE_EXCLUDES = ("ADC", "EADC", "EXP", "FA", "TENSOR", "LOCALIZER")
DWI_DESCRIPTION_EXCLUDES = (
    r"(^|[^a-z]|[de])adc(map)?([^a-z]|$)|apparent|exponential|fractional|tensor|(^|[^a-z])(col)?fa([^a-z]|$)"
)
DWI_DESCRIPTION = r"dwi|diff|trace|b-?1000|isotropic"


def _default_rules() -> tuple[RoutingRule, ...]:
    return (
        RoutingRule(
            name="ct-head",
            pipeline=Pipeline.CT_HEAD,
            match=Match(modality=("CT",), body_part=HEAD_PATTERN, image_type_excludes=("LOCALIZER",)),
        ),
        RoutingRule(
            name="ct-head-by-description",
            pipeline=Pipeline.CT_HEAD,
            match=Match(modality=("CT",), study_description=HEAD_PATTERN, image_type_excludes=("LOCALIZER",)),
        ),
        RoutingRule(
            name="mr-swi",
            pipeline=Pipeline.MR_SWI,
            match=Match(
                modality=("MR",),
                series_description_excludes=SWI_DESCRIPTION_EXCLUDES,
                image_type_excludes=SWI_IMAGE_EXCLUDES,
                any_of=(
                    Match(image_type_contains=("SWI",)),  # Siemens SWI_Images: ORIGINAL\PRIMARY\M\SWI
                    Match(image_type_contains=("T2_STAR",)),  # enhanced MR: Acquisition Contrast T2_STAR
                    Match(sequence_name=r"swi"),  # Siemens *swi3d1r (SWI_Images, Mag_Images)
                    Match(series_description=SWI_DESCRIPTION),
                    # a FLASH / GRE / FFE sequence with a T2 or SWI description is T2*-weighted (t2_fl2d_tra)
                    Match(sequence_name=r"fl[23]d|gre|ffe", series_description=r"t2|swi|hemo|susc"),
                ),
            ),
        ),
        RoutingRule(
            name="mr-dwi",
            pipeline=Pipeline.MR_DWI,
            match=Match(
                modality=("MR",),
                series_description_excludes=DWI_DESCRIPTION_EXCLUDES,
                image_type_excludes=DWI_IMAGE_EXCLUDES,
                any_of=(
                    Match(min_b_value=800),  # DiffusionBValue or the Siemens / GE / Philips private b-value
                    Match(sequence_name=r"ep_b[1-9][0-9]{2,3}"),  # Siemens *ep_b1000t, *ep_b1000#1 (not *ep_b0_1000)
                    Match(image_type_contains=("TRACEW",)),
                    Match(image_type_contains=("DIFFUSION",)),
                    Match(series_description=DWI_DESCRIPTION),
                ),
            ),
        ),
    )


class Series(Frozen):
    quiet_period_s: Annotated[float, _between(0.1, 86400)] = 30
    # A series that declares its size (ImagesInAcquisition) but has not reached it waits this long after its last
    # instance before it completes anyway (a sender that was interrupted usually resends within minutes).
    incomplete_grace_s: Annotated[float, _between(0.1, 86400)] = 300
    rules: tuple[RoutingRule, ...] = Field(default_factory=_default_rules)
    count_rules: tuple[CountRule, ...] = ()
    max_job_attempts: Annotated[int, _between(1, 100)] = 3

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, rules: tuple[RoutingRule, ...]) -> tuple[RoutingRule, ...]:
        names = [r.name for r in rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"rule names must be unique, got duplicates {dupes}")
        return rules


class Filter(Frozen):
    # CT: a slice's brain as a percentage of the series' fullest slice (preprocess/filter.py), not of its pixels.
    min_brain_pct: Annotated[float, _between(0, 100)] = 10.0
    # MR models read the volume in 3-D (microbleed candidates, infarct extent): drop only the nearly empty end slices.
    min_tissue_pct_mr: Annotated[float, _between(0, 100)] = 2.0


PriorityName = Literal["critical", "urgent", "routine", "none"]


class Models(Frozen):
    dir: Path = Path("models")
    threads: Annotated[int, _between(1, 256)] = 2
    device: str = "cpu"
    # auto: bf16 autocast where the CPU has native bf16 (AMX / AVX512-BF16): 1.5-2x faster, probabilities within ~1e-3.
    # int8: each model's statically quantised ONNX Runtime export named in its card (`triage-lab export NAME`).
    precision: Literal["auto", "fp32", "bf16", "int8"] = "auto"
    pipelines: dict[Pipeline, tuple[str, ...]] = Field(
        default_factory=lambda: {
            Pipeline.CT_HEAD: ("ich", "ct_segmenter"),
            Pipeline.MR_SWI: ("cmb",),
            Pipeline.MR_DWI: ("infarct",),
        }
    )
    # Run a model only when an earlier model of the same pipeline found this label present (the source study's
    # classifier gate, at series level: the segmenter outlines what the classifier flagged).
    gates: dict[str, str] = Field(default_factory=lambda: {"ct_segmenter": "any_hemorrhage"})
    # Which finding makes which worklist priority; anything present and unlisted is 'routine'.
    priority: dict[str, PriorityName] = Field(
        default_factory=lambda: {  # type: ignore[arg-type]
            "any_hemorrhage": "critical",
            # The ich classifier's any-hemorrhage output decides the flag; its subtypes qualify it and the crop-grid
            # segmenter measures the extent, neither flags on its own.
            "hemorrhage": "none",
            "epidural": "none",
            "intraparenchymal": "none",
            "intraventricular": "none",
            "subarachnoid": "none",
            "subdural": "none",
            "infarct": "critical",
            "microbleed": "routine",
        }
    )
    # Shadow mode: these models run and their findings are recorded and rated (study page, /performance), but they
    # set no priority, gate no live model and nothing of theirs is sent to a destination or notified.
    shadow: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _shadow_models_run(self) -> Models:
        listed = {name for names in self.pipelines.values() for name in names}
        unknown = [name for name in self.shadow if name not in listed]
        if unknown:
            raise ValueError(f"shadow model(s) {unknown} are in no pipeline (models.pipelines lists {sorted(listed)})")
        return self


# What a destination receives (``outputs``): seg (the lesion SEG and the Grad-CAM map), sr (TID 1500), sc (Secondary
# Capture key images with the outline burned in), gsps (a presentation state outlining the source images), pdf.
OutputName = Literal["seg", "sr", "sc", "gsps", "pdf"]


class Destination(Frozen):
    """A DICOM destination: ``type: dimse`` (C-STORE to ae_title@host:port, the default) or ``type: dicomweb``
    (STOW-RS to ``url``, the DICOMweb service root, with ``token`` as a bearer token; ``qido_check`` asks QIDO-RS
    whether every object arrived). For a DICOMweb destination host and port are taken from the URL."""

    name: str
    type: Literal["dimse", "dicomweb"] = "dimse"
    ae_title: AETitle
    host: str
    port: Port
    calling_ae_title: AETitle | None = None
    tls: TLS = TLS()
    max_attempts: Annotated[int, _between(1, 1000)] = 10
    backoff_initial_s: Annotated[float, _between(0.01, 86400)] = 5
    backoff_max_s: Annotated[float, _between(0.01, 86400)] = 600
    storage_commitment: bool = False
    outputs: tuple[OutputName, ...] = ("seg", "sr")
    url: str | None = None
    token: str | None = None
    qido_check: bool = False
    timeout_s: Annotated[float, _between(1, 3600)] = 30

    @model_validator(mode="before")
    @classmethod
    def _dicomweb_address(cls, data: Any) -> Any:
        """A DICOMweb destination is addressed by its URL: fill host and port from it (and a placeholder AE title)."""
        if not isinstance(data, dict) or data.get("type") != "dicomweb":
            return data
        url = data.get("url")
        if not isinstance(url, str) or not re.match(r"^https?://[^/]+", url):
            raise ValueError(f"url: a DICOMweb destination needs an http(s) service root URL, got {url!r}")
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        data = dict(data)
        data.setdefault("host", parts.hostname or "")
        data.setdefault("port", parts.port or (443 if parts.scheme == "https" else 80))
        data.setdefault("ae_title", "DICOMWEB")
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Destination:
        if not self.outputs:
            raise ValueError("outputs must name at least one of seg, sr, sc, gsps, pdf")
        if len(set(self.outputs)) != len(self.outputs):
            raise ValueError(f"outputs lists an output twice: {list(self.outputs)}")
        if self.type == "dicomweb" and self.storage_commitment:
            raise ValueError("storage_commitment is DIMSE only; a DICOMweb destination uses qido_check")
        if self.type == "dimse" and (self.url is not None or self.qido_check or self.token is not None):
            raise ValueError("url, token and qido_check are for type: dicomweb destinations")
        return self


class StowSender(Frozen):
    """A DICOMweb sender allowed to STOW-RS to us: its bearer token (``token``, or its SHA-256 in hex as
    ``token_sha256``), and ``host`` (an IP address) to pin it to one peer. ``name`` is recorded as the instances'
    calling AE (16 characters at most)."""

    name: AETitle
    token: str | None = None
    token_sha256: str | None = None
    host: str | None = None

    @model_validator(mode="after")
    def _one_token(self) -> StowSender:
        if (self.token is None) == (self.token_sha256 is None):
            raise ValueError("give exactly one of token and token_sha256")
        if self.token is not None and len(self.token) < 16:
            raise ValueError("token must be at least 16 characters")
        if self.token_sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", self.token_sha256):
            raise ValueError("token_sha256 must be 64 lowercase hex digits")
        return self


class DicomWeb(Frozen):
    """STOW-RS receive (``POST /dicomweb/studies``) on its own HTTP listener in the receive role."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: Port = 8042
    allowed_senders: tuple[StowSender, ...] = ()
    max_request_mb: Annotated[int, _between(1, 100000)] = 2048

    @model_validator(mode="after")
    def _senders(self) -> DicomWeb:
        if self.enabled and not self.allowed_senders:
            raise ValueError("allowed_senders: STOW-RS needs at least one sender with a bearer token")
        return self


class User(Frozen):
    name: str
    password_hash: str = Field(description="argon2 hash: triage-node hash-password")


class Web(Frozen):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 8080
    auth: Literal["password", "proxy_header"] = "password"
    proxy_header: str = "X-Remote-User"
    users: tuple[User, ...] = ()
    session_timeout_min: Annotated[float, _between(1, 1440)] = 30
    secret_key: str | None = None
    poll_interval_s: Annotated[float, _between(1, 3600)] = 5
    # After this many failed logins for one user name from one address within lockout_min, further attempts from
    # there are refused (429, Retry-After) without checking the password until lockout_min has passed.
    max_failed_logins: Annotated[int, _between(1, 1000)] = 5
    lockout_min: Annotated[float, _between(0.1, 1440)] = 15


class Webhook(Frozen):
    url: str
    format: Literal["json", "slack", "teams"] = "json"
    include_phi: bool = False


class Email(Frozen):
    smtp_host: str
    smtp_port: Port = 25
    sender: str
    recipients: tuple[str, ...]
    starttls: bool = False
    username: str | None = None
    password: str | None = None
    include_phi: bool = False


class HL7(Frozen):
    """A RIS that takes HL7 v2.5 ORU^R01 over MLLP."""

    host: str
    port: Port
    sending_application: str = "TRIAGE_NODE"
    sending_facility: str = "TRIAGE_NODE"
    receiving_application: str = "RIS"
    receiving_facility: str = "RIS"
    include_phi: bool = False


class FHIR(Frozen):
    """A FHIR R4 server: a transaction Bundle (DiagnosticReport + Flag) is POSTed to ``url`` (the service base)."""

    url: str
    token: str | None = None
    include_phi: bool = False


class Notifications(Frozen):
    webhooks: tuple[Webhook, ...] = ()
    email: Email | None = None
    hl7: tuple[HL7, ...] = ()
    fhir: tuple[FHIR, ...] = ()
    max_attempts: Annotated[int, _between(1, 100)] = 5
    priorities: tuple[Literal["critical", "urgent", "routine"], ...] = ("critical",)


class Logging(Frozen):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


class Config(BaseSettings):
    """The whole configuration. Environment variables ``TRIAGE_NODE__SCP__PORT=11113`` override the file."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
        nested_model_default_partial_update=True,
    )

    scp: SCP = SCP()
    storage: Storage = Storage()
    series: Series = Series()
    filter: Filter = Filter()
    models: Models = Models()
    destinations: tuple[Destination, ...] = ()
    web: Web = Web()
    dicomweb: DicomWeb = DicomWeb()
    notifications: Notifications = Notifications()
    logging: Logging = Logging()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over the file, so a drop-in or a test can change one value without editing it.
        return (env_settings, init_settings)

    @field_validator("destinations")
    @classmethod
    def _unique_destinations(cls, dests: tuple[Destination, ...]) -> tuple[Destination, ...]:
        names = [d.name for d in dests]
        if len(set(names)) != len(names):
            raise ValueError(f"destination names must be unique, got {names}")
        return dests


class ConfigError(ValueError):
    """Invalid configuration; ``problems`` holds one ``key.path: message`` line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def _format(err: dict[str, Any]) -> str:
    path = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if "got " not in msg and err.get("type") not in ("missing", "extra_forbidden") and "input" in err:
        inp = err["input"]
        if not isinstance(inp, dict | list):
            msg = f"{msg}, got {inp!r}"
    if err.get("type") == "extra_forbidden":
        msg = "unknown key (check the spelling against config.yaml)"
    return f"{path}: {msg}"


# Where the file's paths are: (section, key) pairs, and TLS blocks (scp.tls, destinations[].tls).
_PATH_KEYS = (("storage", "spool_dir"), ("models", "dir"))
_TLS_FILES = ("cert_file", "key_file", "ca_file")


def _resolve_file_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative paths written in a config file mean "next to this file": make them absolute against ``base`` (the
    file's folder), so ``serve --config /etc/triage-node/config.yaml`` works from any working directory. Values from
    environment overrides are not touched here: they are relative to the working directory, like any path on a
    command line. Malformed sections are left alone for validation to report."""

    def absolute(value: Any) -> Any:
        if isinstance(value, str | Path) and str(value) and not Path(value).expanduser().is_absolute():
            return os.path.normpath(base / Path(value).expanduser())
        return value

    def tls(block: Any) -> None:
        if isinstance(block, dict):
            for key in _TLS_FILES:
                if block.get(key) is not None:
                    block[key] = absolute(block[key])

    for section, key in _PATH_KEYS:
        part = data.get(section)
        if isinstance(part, dict) and part.get(key) is not None:
            part[key] = absolute(part[key])
    storage = data.get("storage")
    if isinstance(storage, dict) and isinstance(storage.get("database_url"), str):
        storage["database_url"] = _sqlite_url_against(storage["database_url"], base)
    scp = data.get("scp")
    if isinstance(scp, dict):
        tls(scp.get("tls"))
    for dest in data.get("destinations") or ():
        if isinstance(dest, dict):
            tls(dest.get("tls"))
    return data


def _sqlite_url_against(url: str, base: Path) -> str:
    """``sqlite:///var/x.db`` (a relative file) -> ``sqlite:////abs/base/var/x.db``; other URLs unchanged."""
    m = re.match(r"^(sqlite(?:\+\w+)?:///)(.*)$", url)
    if m is None:
        return url
    prefix, rest = m.groups()
    db, sep, query = rest.partition("?")
    if not db or db == ":memory:" or db.startswith("/") or db.startswith("file:"):
        return url
    return f"{prefix}{os.path.normpath(base / db)}{sep}{query}"


def load_config(path: Path | None) -> Config:
    """Read ``path`` (YAML; None means built-in defaults), apply environment overrides, validate everything.

    Relative paths in the file (storage.spool_dir, models.dir, a SQLite database file, TLS files) are taken
    relative to the file's folder; relative paths from environment overrides or the built-in defaults are relative
    to the working directory."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read ({exc.strerror})"]) from exc
        except yaml.YAMLError as exc:
            raise ConfigError([f"{path}: not valid YAML ({exc})"]) from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError([f"{path}: the top level must be a mapping of sections"])
        data = _resolve_file_paths(loaded, Path(os.path.abspath(path)).parent)
    try:
        return Config(**data)
    except ValidationError as exc:
        raise ConfigError([_format(dict(e)) for e in exc.errors()]) from exc
