"""Settings: one pydantic model, read from a TOML file and overridden by ``STREAMER_*`` environment variables.

Precedence (highest first): environment variables (``STREAMER_KAFKA__BOOTSTRAP_SERVERS=host:9092``, nested
with ``__``), then the TOML file given by ``--config`` or ``$STREAMER_CONFIG``, then the defaults below.
Every section forbids unknown keys so that a typo in ``config.toml`` is an error, not a silently ignored knob.
"""

from __future__ import annotations

import json
import os
from contextvars import ContextVar
from datetime import timezone as dt_timezone
from datetime import tzinfo
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, TomlConfigSettingsSource


class ConfigError(Exception):
    """A configuration value is invalid; the message names the field."""


def _empty_to_none(value: Any) -> Any:
    """An empty string in TOML or the environment means "not set" for optional paths."""
    return None if value in ("", None) else value


def _known_timezone(value: str) -> str:
    """An IANA time zone name, or "" (none); an unknown name is an error (pydantic names the field)."""
    if value:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
    return value


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


SectionT = TypeVar("SectionT", bound=Section)


def _overridden(base: SectionT, override: Section | None) -> SectionT:
    """``base`` with the fields a topic's ``override`` sets; the ones it does not set keep ``base``'s values."""
    if override is None:
        return base
    return base.model_copy(update=override.model_dump(include=override.model_fields_set))


class KafkaSettings(Section):
    # NoDecode: the environment may give "a:9092,b:9092" as well as a JSON list (see _split_commas).
    bootstrap_servers: Annotated[list[str], NoDecode] = ["127.0.0.1:9092"]
    topics: Annotated[list[str], NoDecode] = ["ticks"]
    group_id: str = "streamer"
    client_id: str = "streamer"
    # Where a group with no committed offset starts: earliest, latest, or an ISO-8601 timestamp (backfill).
    start_from: str = "earliest"
    # One poll is scored as one batch, and each batch has a fixed cost: a larger maximum makes busy polls
    # cheaper per message, and at modest rates polls stay small whatever the maximum, so latency does not
    # suffer (docs/perf.md, "Why the settings").
    max_poll_records: int = Field(5000, ge=1)
    poll_timeout_ms: int = Field(200, ge=1)
    commit_interval_ms: int = Field(1000, ge=0, description="without a checkpoint store: commit processed offsets "
                                    "this often, and whenever a poll comes back empty; 0: every poll (with a store, "
                                    "commits follow checkpoints)")
    # Optional outputs: one JSON record per scored tick, and the original bytes of rejected messages.
    scores_topic: str | None = None
    dead_letter_topic: str | None = None
    # Security, passed to kafka-python as is (under librdkafka's names with confluent-kafka).
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_password: SecretStr | None = None
    # Client library of the daemon's consumer and producer: kafka-python (pure Python, the default) or
    # confluent-kafka (librdkafka; optional: pip install 'streamer[confluent]'). docs/perf.md compares them.
    client: Literal["kafka-python", "confluent-kafka"] = "kafka-python"
    # Extra kafka-python options passed through (e.g. session_timeout_ms); they win over the ones above.
    # With confluent-kafka, only the names with an exact librdkafka equivalent are accepted (translated).
    consumer: dict[str, Any] = {}
    producer: dict[str, Any] = {}
    # Extra librdkafka properties for confluent-kafka (e.g. "fetch.wait.max.ms"); they win over all above.
    # Unused with kafka-python.
    librdkafka_consumer: dict[str, Any] = {}
    librdkafka_producer: dict[str, Any] = {}

    @field_validator("bootstrap_servers", "topics", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        """Accept ``"a:9092,b:9092"`` as well as a list, as operators write both."""
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _client_options(self) -> KafkaSettings:
        """With confluent-kafka, the kafka-python tables must translate (a typo is an error, not ignored)."""
        if self.client == "confluent-kafka":
            from streamer.clients.confluent import CONSUMER_NAMES, PRODUCER_NAMES, translate

            translate(self.consumer, CONSUMER_NAMES, "kafka.consumer")
            translate(self.producer, PRODUCER_NAMES, "kafka.producer")
        return self


class TickSettings(Section):
    """Field names of the JSON tick format (and of recorded files) and the limits of a valid tick."""

    stream_field: str = "stream"
    ts_field: str = "ts"
    value_field: str = "value"
    values_field: str = "values"
    segment_field: str = "segment"
    reset_field: str = "reset"
    max_message_bytes: int = Field(65536, ge=64)
    # Ticks stamped before this (epoch seconds) or further ahead of the wall clock are rejected as absurd.
    min_timestamp: float = 0.0
    max_future_seconds: float = Field(86400.0, ge=0)
    # Recorded market data often carries exchange-local wall-clock times without an offset.
    timezone: str = Field("", description="IANA zone of timestamps without an offset (e.g. America/New_York); "
                          "empty: UTC")

    _timezone_known = field_validator("timezone")(lambda value: _known_timezone(value))

    @property
    def zone(self) -> tzinfo:
        """The zone a timestamp without an offset is read in (the daemon, the offline commands and replay's
        --start/--end all read naive times through this one property, so they agree)."""
        if not self.timezone:
            return dt_timezone.utc
        from zoneinfo import ZoneInfo

        return ZoneInfo(self.timezone)


class ResetRules(Section):
    """When a stream's state is reset besides an explicit ``reset`` or a change of ``segment``."""

    max_gap_seconds: float = Field(0.0, ge=0, description="a larger gap between ticks resets; 0 disables")
    session_timezone: str = Field("", description="e.g. America/New_York: the first tick of each day resets")
    session_start: str = Field("00:00", pattern=r"^\d{2}:\d{2}$", description="local time a session day starts")

    _timezone_known = field_validator("session_timezone")(lambda value: _known_timezone(value))


class ResetSettings(ResetRules):
    """Default reset rules plus per-topic overrides (only the fields a topic sets override the defaults)."""

    topics: dict[str, ResetRules] = {}

    def for_topic(self, topic: str) -> ResetRules:
        return _overridden(ResetRules(**self.model_dump(exclude={"topics"})), self.topics.get(topic))


class DetectorSettings(Section):
    """How prediction errors become anomaly scores, and how many streams are kept in memory."""

    warmup: int = Field(150, ge=1, description="ticks after a (re)start that score 0 while statistics settle")
    tail_memory: float = Field(1000, ge=1, description="ticks: memory of each stream's surprise distributions")
    tail_index: float = Field(5.5, gt=0, description="Pareto index of a surprise beyond the largest ever seen")
    tail_envelope: float = Field(1.2, ge=0, description="nowhere does a surprise tail fall faster than this many "
                                 "times tail_index from a lower level, so an exceedance remembered from long ago "
                                 "cannot make a stream's false alarms grow with its age; 0: unbounded")
    tail_slow_share: float = Field(0.5, ge=0, description="each tail is also learned with a slow memory, this share "
                                   "of the ticks the stream has learned (at least tail_memory), and a level's rate "
                                   "is the larger of the two estimates: a long-lived stream remembers rare "
                                   "surprises for longer than tail_memory ticks; 0: off")
    equal_timestamps: bool = Field(False, description="a tick stamped at the same time as its stream's last one is "
                                   "scored (trade feeds stamp several trades in one millisecond); false: it is "
                                   "skipped as out of order, like a re-sent message")
    forecast_evidence: bool = Field(True, description="score the LSTM's forecast surprise (false: an output only)")
    season_evidence: bool = Field(True, description="score the time-of-day evidence (false: for streams without a "
                                  "daily pattern such as prices, and an ablation for benchmarks/loco.py)")
    range_evidence: bool = Field(True, description="score range novelty, a value beyond the stream's [min, max] "
                                 "(false: for random-walk streams such as prices, whose new extremes are routine)")
    season_gate: float = Field(1.0, ge=0, description="time-of-day evidence counts up to this many times the "
                               "forecast's decades (the LSTM must be surprised too); 0: ungated")
    season_gate_days: float = Field(1.0, ge=0, description="days: until the stream has covered this much of its "
                                    "own time, it is young: its hourly bins are not yet a daily profile (season_gate "
                                    "applies, and only the short mean of the time-of-day surprise counts, not a "
                                    "single tick's) and its range not yet its range (novelty_gate_young); 0: "
                                    "always")
    novelty_gate: float = Field(1.0, ge=0, description="range novelty counts only when the LSTM's (undamped) "
                                "forecast surprise reaches this many decades too; 0: ungated")
    novelty_gate_young: float = Field(2.0, ge=0, description="novelty_gate while the stream is young (its first "
                                      "season_gate_days): its range is a few hours' range, and a daily pattern's "
                                      "first cycle or a walk's first excursions leave it routinely; 0: ungated")
    protect_decades: float = Field(0.0, ge=0, description="a tick with this many decades of forecast evidence is not "
                                   "learned into the stream's forecast tail nor raises its damping (0: off)")
    normaliser_clip: float = Field(5.0, ge=0, description="a value's pull on its stream's input normaliser is "
                                   "limited to this many scales (Huber), so one wild tick does not throw the "
                                   "forecast off for ~100 ticks; 0: off")
    gap_scaled: bool = Field(True, description="after a gap longer than the stream's usual pace, the forecast "
                             "surprise is divided by sqrt(gap / pace) (false: an ablation)")
    refractory_halflife: float = Field(140, gt=0, description="ticks: half-life of the forecast evidence's damping")
    range_margin: float = Field(0.05, ge=0, description="beyond [min, max] by this share of the range: anomaly")
    season_memory_days: float = Field(20, gt=0, description="days: memory of the time-of-day profile")
    season_window: float = Field(12, ge=1, description="ticks: span of the short mean of time-of-day surprise")
    incident_ticks: float = Field(12, ge=0, description="ticks: within this of the tick that opened or last "
                                  "raised the stream's incident, only a higher score counts; 0 off")
    incident_hold: float = Field(0.3, ge=0, le=1, description="an incident stays open while a tick scores at "
                                 "least this share of its score within every incident_ticks ticks: a new alarm "
                                 "needs a real rise, not the same evidence lasting longer; 0: it closes "
                                 "incident_ticks after the tick that opened or last raised it")
    peak_hold_seconds: float = Field(300.0, ge=0, description="a score's peak is held this long (tick time)")
    max_streams: int = Field(200_000, ge=1, description="least recently seen streams are evicted past this")
    idle_expiry_seconds: float = Field(0.0, ge=0, description="daemon: forget streams silent this long; 0 never")
    topics: dict[str, DetectorSettings] = Field({}, description="per-topic overrides of how ticks are scored (only "
                                                "the fields a topic sets override the ones above), e.g. prices "
                                                "and sensor metrics served by one daemon")

    @field_validator("topics")
    @classmethod
    def _scoring_only(cls, topics: dict[str, DetectorSettings]) -> dict[str, DetectorSettings]:
        for topic, override in topics.items():
            whole = sorted(override.model_fields_set & DAEMON_WIDE)
            if whole:
                raise ValueError(f"topic {topic!r} cannot set {', '.join(whole)}: the whole daemon's, not a topic's")
        return topics

    def for_topic(self, topic: str) -> DetectorSettings:
        """The settings a tick of ``topic`` is scored with: these, with what the topic's override sets."""
        return _overridden(self.model_copy(update={"topics": {}}), self.topics.get(topic))


DAEMON_WIDE = {"max_streams", "idle_expiry_seconds", "topics"}  # detector settings no topic can override


class MetricsSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(9108, ge=0, le=65535)
    # Only this many streams (the highest current scores) carry a `stream` label, and as many devices a
    # `device` label; the rest are aggregated.
    max_stream_series: int = Field(1000, ge=0)
    # Optional HTTPS and basic auth for /metrics (/healthz and /readyz stay open for probes).
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
    basic_auth_username: str | None = None
    basic_auth_password: SecretStr | None = None

    @model_validator(mode="after")
    def _pairs(self) -> MetricsSettings:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("tls_certfile and tls_keyfile go together")
        if (self.basic_auth_username is None) != (self.basic_auth_password is None):
            raise ValueError("basic_auth_username and basic_auth_password go together")
        return self


class ModelSettings(Section):
    path: Path | None = Field(None, description="model file; empty means the model bundled with the package")

    _empty_is_bundled = field_validator("path", mode="before")(lambda value: _empty_to_none(value))


class CheckpointSettings(Section):
    """Per-partition state checkpoints; none unless ``path`` or ``store`` is set."""

    store: Literal["local", "kafka"] | None = Field(None, description="default: local when path is set")
    path: Path | None = Field(None, description="directory of the local store (e.g. /var/lib/streamer)")
    topic: str = Field("streamer-checkpoints", description="compacted topic of the kafka store")
    interval_messages: int = Field(1_000_000, ge=1, description="checkpoint (then commit) after this many "
                                   "messages...")
    interval_seconds: float = Field(10.0, gt=0, description="...or this many seconds, whichever comes first")

    _empty_is_none = field_validator("path", mode="before")(lambda value: _empty_to_none(value))

    @model_validator(mode="after")
    def _resolve_store(self) -> CheckpointSettings:
        if self.store is None and self.path is not None:
            self.store = "local"
        if self.store == "local" and self.path is None:
            raise ValueError("path is required for the local store")
        return self


class LogSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


_config_file: ContextVar[Path | None] = ContextVar("streamer_config_file", default=None)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAMER_", env_nested_delimiter="__", extra="forbid")

    kafka: KafkaSettings = KafkaSettings()
    ticks: TickSettings = TickSettings()
    resets: ResetSettings = ResetSettings()
    detector: DetectorSettings = DetectorSettings()
    metrics: MetricsSettings = MetricsSettings()
    model: ModelSettings = ModelSettings()
    checkpoint: CheckpointSettings = CheckpointSettings()
    log: LogSettings = LogSettings()

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):  # noqa: ANN001 - signature fixed by pydantic-settings
        path = _config_file.get()
        toml = (TomlConfigSettingsSource(settings_cls, toml_file=path),) if path else ()
        return (init_settings, env_settings, *toml)


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the effective settings; ``path`` falls back to ``$STREAMER_CONFIG``. Raises ConfigError."""
    path = path or os.environ.get("STREAMER_CONFIG") or None
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"config file not found: {path}")
    token = _config_file.set(Path(path) if path else None)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    except ValueError as exc:  # e.g. a TOML syntax error or an env value that is not valid JSON
        raise ConfigError(f"invalid configuration: {exc}") from None
    finally:
        _config_file.reset(token)


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"])
        got = error.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{field}: {error['msg']}{shown}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def redacted(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data with every secret masked (for `streamer config` and logs)."""
    data = settings.model_dump(mode="json")
    for section in ("consumer", "producer", "librdkafka_consumer", "librdkafka_producer"):  # may hold passwords
        for key in data["kafka"][section]:
            if any(word in key.lower() for word in ("password", "secret", "token")):
                data["kafka"][section][key] = "**********"
    for section in ("resets", "detector"):  # a topic's override: the keys it sets, the others come from above
        data[section]["topics"] = {topic: override.model_dump(mode="json", include=override.model_fields_set)
                                   for topic, override in getattr(settings, section).topics.items()}
    return data
