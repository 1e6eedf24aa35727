"""What the anomaly model's score means at each lane, learned from the lane's own ordinary traffic.

The model's own score (``raw``) is calibrated on the traffic it was trained on: ``-log10`` of the fraction of
that traffic at least as unusual. A real lane differs (its portal, background, vehicles, speeds), so the same raw
score is common at one lane and rare at another. Each lane therefore keeps a *window*: the raw scores of its last
``calibration_window`` ordinary occupancies (complete, scored, verdict not ALARM), and an occupancy's calibrated
score is the conformal p-value of its raw score in that window,

    score = -log10((k + 1) / (n + 1)),  k = occupancies of the window scoring at least ``raw``, n = the window's size,

which reads "at this lane, one ordinary vehicle in 10^score scores at least this": for ordinary traffic that does
not change, ``P(score >= s) <= 10^-s`` whatever the model's scale at the lane (Vovk, Gammerman and Shafer,
*Algorithmic Learning in a Random World*, 2005, ch. 2; the +1 is the small-sample correction that makes it hold
for every n). Beyond the window's largest raw score the empirical score stops at ``log10(n + 1)``; there it goes on
with the model's own tail, one decade per unit of raw score from the window's :data:`TAIL_K`-th largest, so a
configured ``alarm_threshold`` above the window's resolution can still be reached.

Until a lane has ``min_occupancies`` the calibration is *warming up*: the decision has the raw score but no score
and no finding (and no model alarm, and no NORM release recommended), since a raw score from another domain says
nothing about this lane.

What enters the window, and why:

- occupancies whose verdict is ALARM (a rule, the portal's own alarm, tamper, or a model alarm) never enter: a
  stream of alarmed vehicles cannot teach the lane that they are ordinary;
- findings (a score at or above ``finding_threshold`` without an alarm) do enter, with their raw score. Leaving
  them out would truncate the window at the finding level: its top 1 % would then lie below the level, each turn
  of the window would lower the level by another 1 % of the traffic, and the finding rate would climb without end
  (about 1 - 0.99^t after t turns of the window). Kept, the window is a sample of the lane's ordinary traffic and
  the finding rate stays at its nominal ``10^-finding_threshold``. ``lanewatch_model_finding_rate`` shows a lane
  where unusual vehicles are more than that.

Drift: the model's raw score is, on its training traffic, at least 2 for one vehicle in 100 (that is what the
training calibration means). When a lane's window holds ``drift_ratio`` times that share or more, the lane's traffic
has left the training domain: the lane's calibration still gives findings at the nominal rate, but the model's
ranking of its vehicles was learnt on other traffic, so the lane reports the fault ``model-drift`` (metrics
``lanewatch_model_drift`` and ``lanewatch_model_drift_ratio``) until the model is retrained on such traffic.

Windows are kept in SQLite (``[model] state``), one row per occupancy, bounded to the window, written in one
immediate transaction per occupancy, and read back at start-up: a restarted service keeps its calibration. A file
that cannot be read as one is moved aside to ``<file>.corrupt`` and reported (logged, counted in
``lanewatch_model_state_errors_total``, shown in /healthz); the lanes then warm up again. A window is tied to the
model version that scored it: a new model starts a new window.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import sqlite3
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from lanewatch.edge.config import ModelConfig
from lanewatch.edge.ops.metrics import ModelMetrics
from lanewatch.edge.ops.ratelog import RateLimitedLog
from lanewatch.edge.store import SqliteStore

log = logging.getLogger("lanewatch.model")

TRAINING_LEVEL = 2.0
"""A raw score that one in :data:`TRAINING_SHARE` of the training traffic reaches (its calibration's meaning)."""
TRAINING_SHARE = 10**-TRAINING_LEVEL
TAIL_K = 10
"""Beyond the window's largest raw score, the score continues from the window's TAIL_K-th largest."""
STATE_VERSION = 1
"""Layout of the state file (``PRAGMA user_version``)."""
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS window (id INTEGER PRIMARY KEY AUTOINCREMENT, lane TEXT NOT NULL, "
    "model TEXT NOT NULL, occupancy_id TEXT NOT NULL, raw REAL NOT NULL, finding INTEGER NOT NULL, "
    "UNIQUE (lane, occupancy_id))",
    "CREATE INDEX IF NOT EXISTS window_by_lane ON window (lane, model, id)",
)


@dataclass(frozen=True)
class Calibrated:
    """An occupancy's raw score as its lane's calibration reads it."""

    score: float | None
    """-log10 of the fraction of the lane's ordinary occupancies scoring at least as high; None while warming up."""
    occupancies: int
    """Ordinary occupancies in the lane's window when the score was read."""

    @property
    def warming_up(self) -> bool:
        return self.score is None


class Window:
    """One lane's last ``size`` ordinary occupancies: (occupancy id, raw score, finding), oldest first, with the raw
    scores also kept sorted for the exceedance counts."""

    def __init__(self, model: str, size: int) -> None:
        self.model = model
        self.size = size
        self.rows: deque[tuple[str, float, bool]] = deque()
        self.ids: set[str] = set()
        self.sorted: list[float] = []
        self.findings = 0
        self.high = 0
        """Occupancies with a raw score of at least :data:`TRAINING_LEVEL`."""
        self.kept = False
        """Whether a row of this window was written to the state file by this process."""

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, occupancy_id: str, raw: float, finding: bool) -> bool:
        """Add one occupancy (the oldest leaves when full); False when it is in the window already."""
        if occupancy_id in self.ids:
            return False
        self.rows.append((occupancy_id, raw, finding))
        self.ids.add(occupancy_id)
        bisect.insort(self.sorted, raw)
        self.findings += finding
        self.high += raw >= TRAINING_LEVEL
        while len(self.rows) > self.size:
            old_id, old_raw, old_finding = self.rows.popleft()
            self.ids.discard(old_id)
            del self.sorted[bisect.bisect_left(self.sorted, old_raw)]
            self.findings -= old_finding
            self.high -= old_raw >= TRAINING_LEVEL
        return True

    def score(self, raw: float) -> float:
        """The calibrated score of ``raw`` (see the module docstring)."""
        n = len(self.sorted)
        at_least = n - bisect.bisect_left(self.sorted, raw)
        score = -math.log10((at_least + 1) / (n + 1))
        if at_least == 0 and n:
            k = min(TAIL_K, n)
            score = max(score, -math.log10((k + 1) / (n + 1)) + raw - self.sorted[n - k])
        return score

    @property
    def finding_rate(self) -> float:
        """Findings per occupancy of the window (0 when empty)."""
        return self.findings / len(self.rows) if self.rows else 0.0

    @property
    def drift_ratio(self) -> float:
        """The window's share of raw scores >= :data:`TRAINING_LEVEL` over the training traffic's."""
        return self.high / len(self.rows) / TRAINING_SHARE if self.rows else 0.0


class StateStore(SqliteStore):
    """The windows on disk (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, SCHEMA, pragmas=("journal_mode = WAL", "synchronous = NORMAL"))
        version = self._read("PRAGMA user_version")[0][0]
        if version not in (0, STATE_VERSION):
            self.close()
            raise sqlite3.DatabaseError(f"state layout version {version}, this lanewatch knows {STATE_VERSION}")
        if version == 0:
            with self._tx() as conn:
                conn.execute(f"PRAGMA user_version = {STATE_VERSION}")
        self._read("SELECT count(*) FROM window")

    def rows(self, lane: str, model: str, size: int) -> list[tuple[str, float, bool]]:
        """The lane's last ``size`` rows scored by ``model``, oldest first."""
        rows = self._read(
            "SELECT occupancy_id, raw, finding FROM window WHERE lane = ? AND model = ? ORDER BY id DESC LIMIT ?",
            (lane, model, size),
        )
        return [(str(o), float(r), bool(f)) for o, r, f in reversed(rows)]

    def add(self, lane: str, model: str, row: tuple[str, float, bool], size: int, first: bool) -> None:
        """Keep one row of the lane's window; rows beyond the last ``size`` go, and on the ``first`` row of a
        window, the lane's rows of other models."""
        with self._tx() as conn:
            if first:
                conn.execute("DELETE FROM window WHERE lane = ? AND model != ?", (lane, model))
            conn.execute(
                "INSERT OR IGNORE INTO window (lane, model, occupancy_id, raw, finding) VALUES (?, ?, ?, ?, ?)",
                (lane, model, row[0], row[1], int(row[2])),
            )
            conn.execute(
                "DELETE FROM window WHERE lane = ? AND model = ? AND id <= (SELECT id FROM window "
                "WHERE lane = ? AND model = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (lane, model, lane, model, size),
            )


class LaneCalibration:
    """Every lane's window, kept in memory and in the state file; used from the service loop only."""

    def __init__(self, cfg: ModelConfig, path: Path | None, metrics: ModelMetrics) -> None:
        self.cfg = cfg
        self.path = path
        self.metrics = metrics
        self.windows: dict[str, Window] = {}
        self.drifting: set[str] = set()
        """Lanes whose traffic has left the training domain."""
        self.problem = ""
        """What is wrong with the state file ("" when nothing is)."""
        self._ratelog = RateLimitedLog(log)
        self._unsaved: list[tuple[str, tuple[str, float, bool], Window]] = []
        """Occupancies learnt, not yet in the state file: (lane, row, its window)."""
        self.store = self._open() if path is not None else None

    def _open(self) -> StateStore | None:
        """The state file, a new one when it cannot be read as one (the old one moved aside), or None (reported)."""
        assert self.path is not None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return StateStore(self.path)
        except sqlite3.OperationalError as exc:  # cannot open, locked, read-only: the file itself may be fine
            self._report("open", f"{self.path}: cannot open the calibration state ({exc}); kept in memory only")
            return None
        except (sqlite3.DatabaseError, OSError) as exc:
            self._report("open", f"{self.path}: not a calibration state ({exc})")
        aside = self.path.with_name(self.path.name + ".corrupt")
        try:
            os.replace(self.path, aside)
            for suffix in ("-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            store = StateStore(self.path)
        except (sqlite3.Error, OSError) as exc:
            self._report("open", f"{self.path}: cannot start a new calibration state ({exc}); kept in memory only")
            return None
        self.problem = f"{self.path} was not a calibration state; moved to {aside}, the lanes warm up again"
        log.error("model calibration: %s", self.problem)
        return store

    def _report(self, op: str, problem: str) -> None:
        self.problem = problem
        self.metrics.state_errors.labels(op).inc()
        self._ratelog.log(logging.ERROR, f"state {op}", "model calibration: %s", problem)

    def window(self, lane: str, model: str) -> Window:
        """The lane's window for ``model``, read from the state file the first time (or after a model change)."""
        window = self.windows.get(lane)
        if window is not None and window.model == model:
            return window
        window = Window(model, self.cfg.calibration_window)
        if self.store is not None:
            try:
                for row in self.store.rows(lane, model, window.size):
                    window.add(*row)
            except sqlite3.Error as exc:
                self._report("read", f"{self.path}: cannot read lane {lane}'s window ({exc})")
        self.windows[lane] = window
        self._publish(lane, window)
        return window

    def read(self, lane: str, model: str, raw: float) -> Calibrated:
        """``raw`` as the lane's calibration reads it (None while warming up)."""
        window = self.window(lane, model)
        n = len(window)
        return Calibrated(window.score(raw) if n >= self.cfg.min_occupancies else None, n)

    def learn(self, lane: str, model: str, occupancy_id: str, raw: float, finding: bool) -> None:
        """Add an ordinary occupancy to the lane's window; the state file gets it at the next :meth:`save`."""
        window = self.window(lane, model)
        if not window.add(occupancy_id, raw, finding):
            return
        if self.store is not None:
            self._unsaved.append((lane, (occupancy_id, raw, finding), window))
        self._publish(lane, window)

    def save(self) -> None:
        """Keep in the state file the occupancies learnt since the last call. The service calls it once its
        decisions are journaled and published, so the file's commit is never on the way of an alert."""
        unsaved, self._unsaved = self._unsaved, []
        if self.store is None:
            return
        for lane, row, window in unsaved:
            try:
                self.store.add(lane, window.model, row, window.size, first=not window.kept)
                window.kept = True
            except sqlite3.Error as exc:
                self._report("write", f"{self.path}: cannot keep lane {lane}'s window ({exc}); kept in memory")

    def _publish(self, lane: str, window: Window) -> None:
        n = len(window)
        ready = n >= self.cfg.min_occupancies
        self.metrics.calibration_occupancies.labels(lane).set(n)
        self.metrics.finding_rate.labels(lane).set(window.finding_rate)
        self.metrics.drift_ratio.labels(lane).set(window.drift_ratio)
        drift = ready and window.drift_ratio >= self.cfg.drift_ratio
        if drift != (lane in self.drifting):
            if drift:
                self.drifting.add(lane)
                log.warning(
                    "lane %s: model-drift: %.1f%% of its last %d ordinary occupancies score %.0f or more on the "
                    "model's training scale (%.0f%% in training): retrain the model on such traffic",
                    lane,
                    100 * window.high / n,
                    n,
                    TRAINING_LEVEL,
                    100 * TRAINING_SHARE,
                )
            else:
                self.drifting.discard(lane)
                log.info("lane %s: model-drift cleared (drift ratio %.1f)", lane, window.drift_ratio)
        self.metrics.drift.labels(lane).set(1 if drift else 0)

    def close(self) -> None:
        self.save()
        if self.store is not None:
            self.store.close()
