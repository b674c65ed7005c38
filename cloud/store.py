"""Durable store of scores, camera statistics and alerts (SQLite by default, PostgreSQL by URL).

``record`` is the only writer. It stores one scored frame exactly once and moves the camera's alert
hysteresis in the same transaction, deriving that state from the rows themselves (the camera's open alert
and the normal frames seen since its last anomalous one), so a restarted cloud carries on where it stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    case,
    create_engine,
    delete,
    event,
    func,
    literal,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.sql import ColumnElement, Select
from sqlalchemy.types import TypeDecorator

from cloud.config import AlertConfig

UTC = timezone.utc
CAMERA_ID_MAX = 128
_ID = BigInteger().with_variant(Integer(), "sqlite")  # SQLite only auto-increments INTEGER PRIMARY KEY


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no offset: store naive UTC there)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = _require_aware(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class Camera(Base):
    __tablename__ = "cameras"

    camera_id: Mapped[str] = mapped_column(String(CAMERA_ID_MAX), primary_key=True)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    frames: Mapped[int] = mapped_column(BigInteger)
    bytes_total: Mapped[int] = mapped_column(BigInteger)


class Score(Base):
    __tablename__ = "scores"
    __table_args__ = (
        UniqueConstraint("camera_id", "seq", name="uq_scores_camera_seq"),
        Index("ix_scores_camera_capture", "camera_id", "capture_time"),
    )

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    camera_id: Mapped[str] = mapped_column(String(CAMERA_ID_MAX))
    seq: Mapped[int] = mapped_column(BigInteger)
    capture_time: Mapped[datetime] = mapped_column(UTCDateTime)
    received_time: Mapped[datetime] = mapped_column(UTCDateTime)
    score: Mapped[float] = mapped_column(Float)
    is_anomaly: Mapped[bool] = mapped_column(Boolean)
    nbytes: Mapped[int] = mapped_column(Integer)


class ReferenceLink(Base):
    """Each camera's reference chain: what its next delta frame is decoded against, rebuilt after a restart.
    A chain starts with a key frame (or, after many delta frames, a checkpoint of the decoded codes) and
    goes on with the coded delta frames that followed it, as they came: each frame stored once, as the
    bytes that arrived (~18 kB a frame for the demo, where storing each frame's codes took ~50 kB and a
    zstd pass). Written in the frame's own transaction, so it is durable exactly when the frame's ack is."""

    __tablename__ = "reference_links"

    camera_id: Mapped[str] = mapped_column(String(CAMERA_ID_MAX), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    checkpoint: Mapped[bool] = mapped_column(Boolean)  # data: packed codes (codec.stream.pack_codes), not a frame
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Alert(Base):
    """An episode of anomalous frames; start/end/peak describe its anomalous frames only."""

    __tablename__ = "alerts"
    __table_args__ = (
        Index("ix_alerts_camera_state", "camera_id", "state"),
        Index("ix_alerts_start_time", "start_time"),
    )

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    camera_id: Mapped[str] = mapped_column(String(CAMERA_ID_MAX))
    state: Mapped[str] = mapped_column(String(8))  # "open" | "closed"
    start_seq: Mapped[int] = mapped_column(BigInteger)
    end_seq: Mapped[int] = mapped_column(BigInteger)
    start_time: Mapped[datetime] = mapped_column(UTCDateTime)
    end_time: Mapped[datetime] = mapped_column(UTCDateTime)
    peak_score: Mapped[float] = mapped_column(Float)
    peak_seq: Mapped[int] = mapped_column(BigInteger)
    frames: Mapped[int] = mapped_column(BigInteger)


class AlertOut(BaseModel):
    """An alert as the API and the gRPC side see it. ``end_*`` is the last anomalous frame so far."""

    model_config = ConfigDict(from_attributes=True, frozen=True)

    id: int
    camera_id: str
    state: Literal["open", "closed"]
    start_seq: int
    end_seq: int
    start_time: datetime
    end_time: datetime
    peak_score: float
    peak_seq: int
    frames: int


class ScoreOut(BaseModel):
    model_config = ConfigDict(from_attributes=True, frozen=True)

    camera_id: str
    seq: int
    capture_time: datetime
    received_time: datetime
    score: float
    is_anomaly: bool
    nbytes: int


class CameraOut(BaseModel):
    model_config = ConfigDict(frozen=True)

    camera_id: str
    first_seen: datetime
    last_seen: datetime
    frames: int
    mean_bytes_per_frame: float
    open_alert: int | None


@dataclass(frozen=True)
class Link:
    """One link of a camera's reference chain: a coded frame as it arrived, or a checkpoint (packed codes)."""

    data: bytes
    checkpoint: bool = False
    starts: bool = False  # a key frame or a checkpoint: the chain starts afresh from this link (recording)
    seq: int = -1  # its frame's seq (reading back)


@dataclass(frozen=True)
class Recorded:
    """Outcome of ``Store.record``; a duplicate carries the score stored the first time."""

    duplicate: bool
    score: float
    is_anomaly: bool
    alert_opened: AlertOut | None = None
    alert_closed: AlertOut | None = None


class Store:
    def __init__(self, url: str, alert: AlertConfig | None = None) -> None:
        self.alert = alert or AlertConfig()
        self.engine = _create_engine(url)
        dialect = self.engine.dialect.name
        self._insert = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}[dialect]
        # SQLite: take the write lock up front so two writers never deadlock upgrading a read lock.
        self._write = sessionmaker(self.engine.execution_options(sqlite_begin="IMMEDIATE"))
        self._read = sessionmaker(self.engine)
        Base.metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> bool:
        """Whether the database answers (readiness)."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except SQLAlchemyError:
            return False

    def record(
        self, camera_id: str, seq: int, capture_time: datetime, score: float, is_anomaly: bool, nbytes: int,
        link: Link | None = None,
    ) -> Recorded:
        """Store one scored frame and update camera stats and alerts, in one transaction; `link`: the frame's
        link of its camera's reference chain, appended (or starting the chain afresh) when no later frame is
        stored.

        A frame already stored under (camera_id, seq) changes nothing and returns what was stored. A late
        frame (an older seq than one already stored) is stored and counted but leaves the alerts alone.
        """
        # Plain Python values: the tail hands over numpy scalars, which the DB drivers do not adapt.
        seq, score, is_anomaly, nbytes = int(seq), float(score), bool(is_anomaly), int(nbytes)
        capture_time = _check_frame(camera_id, seq, capture_time, score, nbytes)
        now = datetime.now(UTC)
        with self._write() as session, session.begin():
            inserted = session.execute(
                self._insert(Score)
                .values(
                    camera_id=camera_id,
                    seq=seq,
                    capture_time=capture_time,
                    received_time=now,
                    score=score,
                    is_anomaly=is_anomaly,
                    nbytes=nbytes,
                )
                .on_conflict_do_nothing(index_elements=[Score.camera_id, Score.seq])
                .returning(Score.id)
            ).scalar_one_or_none()
            if inserted is None:
                stored = session.execute(
                    select(Score.score, Score.is_anomaly).where(
                        Score.camera_id == camera_id, Score.seq == seq
                    )
                ).one()
                return Recorded(duplicate=True, score=stored.score, is_anomaly=stored.is_anomaly)

            stamp = literal(now, UTCDateTime)
            # The upsert also locks the camera row (PostgreSQL), serialising alert updates per camera.
            session.execute(
                self._insert(Camera)
                .values(camera_id=camera_id, first_seen=now, last_seen=now, frames=1, bytes_total=nbytes)
                .on_conflict_do_update(
                    index_elements=[Camera.camera_id],
                    set_={
                        "frames": Camera.frames + 1,
                        "bytes_total": Camera.bytes_total + nbytes,
                        "last_seen": case((Camera.last_seen < stamp, stamp), else_=Camera.last_seen),
                    },
                )
            )
            late = session.scalar(
                select(Score.id).where(Score.camera_id == camera_id, Score.seq > seq).limit(1)
            )
            if link is not None and late is None:
                if link.starts:
                    session.execute(delete(ReferenceLink).where(ReferenceLink.camera_id == camera_id))
                session.execute(
                    self._insert(ReferenceLink)
                    .values(camera_id=camera_id, seq=seq, checkpoint=link.checkpoint, data=link.data)
                    .on_conflict_do_nothing(index_elements=[ReferenceLink.camera_id, ReferenceLink.seq])
                )
            opened = closed = None
            if late is None:
                opened, closed = self._advance_alert(session, camera_id, seq, capture_time, score, is_anomaly)
        return Recorded(False, score, is_anomaly, alert_opened=opened, alert_closed=closed)

    def _advance_alert(
        self,
        session: Session,
        camera_id: str,
        seq: int,
        capture_time: datetime,
        score: float,
        anomalous: bool,
    ) -> tuple[AlertOut | None, AlertOut | None]:
        """Hysteresis for the newest frame of a camera: returns (opened, closed)."""
        alert = session.scalars(
            select(Alert).where(Alert.camera_id == camera_id, Alert.state == "open").order_by(Alert.id.desc())
        ).first()
        if anomalous:
            if alert is None:
                # Open only on `open_after` anomalous frames in a row (this one included), so that a
                # single noisy frame never raises an alert; the alert starts at the first of them.
                run = session.execute(
                    select(Score.seq, Score.capture_time, Score.score, Score.is_anomaly)
                    .where(Score.camera_id == camera_id, Score.seq <= seq, Score.seq > seq - self.alert.open_after)
                    .order_by(Score.seq)
                ).all()
                if len(run) < self.alert.open_after or not all(r.is_anomaly for r in run):
                    return None, None
                peak = max(run, key=lambda r: r.score)
                alert = Alert(
                    camera_id=camera_id,
                    state="open",
                    start_seq=run[0].seq,
                    end_seq=seq,
                    start_time=run[0].capture_time,
                    end_time=capture_time,
                    peak_score=peak.score,
                    peak_seq=peak.seq,
                    frames=len(run),
                )
                session.add(alert)
                session.flush()
                return AlertOut.model_validate(alert), None
            alert.end_seq, alert.end_time, alert.frames = seq, capture_time, alert.frames + 1
            if score > alert.peak_score:
                alert.peak_score, alert.peak_seq = score, seq
            return None, None
        if alert is None:
            return None, None
        normal_since = session.scalar(
            select(func.count())
            .select_from(Score)
            .where(Score.camera_id == camera_id, Score.seq > alert.end_seq, Score.is_anomaly.is_(False))
        )
        if normal_since < self.alert.close_after:
            return None, None
        alert.state = "closed"
        session.flush()
        return None, AlertOut.model_validate(alert)

    def stored(self, camera_id: str, seq: int) -> tuple[float, bool] | None:
        """(score, is_anomaly) of a frame already stored, so a retried frame skips the tail."""
        with self._read() as session:
            row = session.execute(
                select(Score.score, Score.is_anomaly).where(Score.camera_id == camera_id, Score.seq == int(seq))
            ).one_or_none()
            return None if row is None else (row.score, row.is_anomaly)

    def reference_chain(self, camera_id: str) -> list[Link]:
        """The camera's reference chain, in seq order (empty when none)."""
        with self._read() as session:
            rows = session.execute(
                select(ReferenceLink.seq, ReferenceLink.checkpoint, ReferenceLink.data)
                .where(ReferenceLink.camera_id == camera_id)
                .order_by(ReferenceLink.seq)
            ).all()
            return [Link(bytes(r.data), checkpoint=r.checkpoint, seq=int(r.seq)) for r in rows]

    def last_seq(self, camera_id: str) -> int:
        """The highest sequence number stored for the camera, -1 when none (a restarted edge resumes after it)."""
        with self._read() as session:
            value = session.scalar(select(func.max(Score.seq)).where(Score.camera_id == camera_id))
            return -1 if value is None else int(value)

    def list_alerts(
        self,
        camera_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        min_score: float | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[AlertOut], int]:
        """Alerts overlapping [since, until) (aware datetimes), newest first, and how many match in all."""
        since, until = _window(since, until)
        where: list[ColumnElement[bool]] = []
        if camera_id is not None:
            where.append(Alert.camera_id == camera_id)
        if since is not None:
            where.append((Alert.state == "open") | (Alert.end_time >= since))
        if until is not None:
            where.append(Alert.start_time < until)
        if min_score is not None:
            where.append(Alert.peak_score >= min_score)
        stmt = select(Alert).where(*where).order_by(Alert.start_time.desc(), Alert.id.desc())
        with self._read() as session:
            rows, total = _page(session, stmt, limit, offset)
            return [AlertOut.model_validate(a) for a in rows], total

    def get_alert(self, alert_id: int) -> AlertOut | None:
        with self._read() as session:
            alert = session.get(Alert, alert_id)
            return None if alert is None else AlertOut.model_validate(alert)

    def list_scores(
        self,
        camera_id: str,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[ScoreOut], int]:
        """Scores of one camera captured in [since, until) (aware datetimes), newest first, and the total."""
        since, until = _window(since, until)
        where: list[ColumnElement[bool]] = [Score.camera_id == camera_id]
        if since is not None:
            where.append(Score.capture_time >= since)
        if until is not None:
            where.append(Score.capture_time < until)
        stmt = select(Score).where(*where).order_by(Score.seq.desc())
        with self._read() as session:
            rows, total = _page(session, stmt, limit, offset)
            return [ScoreOut.model_validate(s) for s in rows], total

    def list_cameras(self) -> list[CameraOut]:
        stmt = (
            select(Camera, Alert.id)
            .outerjoin(Alert, (Alert.camera_id == Camera.camera_id) & (Alert.state == "open"))
            .order_by(Camera.camera_id)
        )
        with self._read() as session:
            return [
                CameraOut(
                    camera_id=cam.camera_id,
                    first_seen=cam.first_seen,
                    last_seen=cam.last_seen,
                    frames=cam.frames,
                    mean_bytes_per_frame=cam.bytes_total / cam.frames if cam.frames else 0.0,
                    open_alert=open_id,
                )
                for cam, open_id in session.execute(stmt)
            ]


def _page(session: Session, stmt: Select[Any], limit: int, offset: int) -> tuple[list[Any], int]:
    total = session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery()))
    rows = list(session.scalars(stmt.limit(limit).offset(offset)))
    return rows, total or 0


def _create_engine(url: str) -> Engine:
    backend = make_url(url).get_backend_name()
    if backend == "postgresql":
        return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 5})
    if backend != "sqlite":
        raise ValueError(f"unsupported database {url!r}: use sqlite:///PATH or postgresql+psycopg://...")
    engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (see _on_begin)
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers (REST) never block the writer (gRPC)
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql(f"BEGIN {conn.get_execution_options().get('sqlite_begin', 'DEFERRED')}")

    return engine


def _require_aware(t: datetime) -> datetime:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"naive datetime {t.isoformat()}: give a timezone-aware time (UTC)")
    return t.astimezone(UTC)


def _window(since: datetime | None, until: datetime | None) -> tuple[datetime | None, datetime | None]:
    return (
        None if since is None else _require_aware(since),
        None if until is None else _require_aware(until),
    )


def _check_frame(camera_id: str, seq: int, capture_time: datetime, score: float, nbytes: int) -> datetime:
    """Reject what the schema cannot hold with a clear error; returns capture_time in UTC."""
    if not camera_id or len(camera_id) > CAMERA_ID_MAX:
        raise ValueError(f"camera_id must have 1..{CAMERA_ID_MAX} characters, got {camera_id!r}")
    if not 0 <= seq < 2**63:
        raise ValueError(f"seq must be in [0, 2**63), got {seq}")
    if not math.isfinite(score):
        raise ValueError(f"score must be finite, got {score}")
    if not 0 <= nbytes < 2**31:
        raise ValueError(f"nbytes must be in [0, 2**31), got {nbytes}")
    return _require_aware(capture_time)
