"""WAL checkpoints on a background thread, so appends do not wait for them.

In WAL mode a commit only appends pages to the `-wal` file; copying them back into the
database file (a checkpoint) is separate work, and by default SQLite does it inside the
commit that takes the WAL past `wal_autocheckpoint` pages. That commit then waits for the
copy and two fsyncs: on this project's machines about 30 ms for a 16 MB WAL, against 0.3 ms
for an ordinary 100-event commit, and a quarter of the time of a bulk append.

`WalCheckpointer` runs `PRAGMA wal_checkpoint(PASSIVE)` on its own connection and thread
once a few MB have gone into the WAL since the last one (the store counts each commit's
payloads plus the few pages every commit rewrites, which dominate a one-event commit). SQLite releases the GIL while it
copies and syncs, so the writer goes on preparing and inserting events meanwhile. A passive
checkpoint never blocks a writer or a reader, and it is crash-safe whichever connection runs
it, so durability is what it was.

SQLite's own autocheckpoint stays on as the backstop: a writer that keeps appending while
the thread copies means the WAL is never fully copied at a moment when it could restart,
and then the commit that crosses `wal_autocheckpoint` finishes the rest inline and lets the
WAL start over. That commit still waits for two fsyncs (10-30 ms), so the store raises the
threshold to `BACKSTOP_PAGES`: at 16 KB pages the WAL file then grows to about 64 MB before
it restarts, instead of 16 MB, and a bulk append spends 6-13% less time (bench/store.py
configurations compared in one process). The WAL file goes when the last connection closes.
Not at synchronous=FULL or EXTRA: there every commit syncs the WAL, and while the file is
still growing each of those syncs writes its new size too, so single-event appends ran at
half speed until the WAL had reached 64 MB; there it keeps SQLite's default.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

__all__ = ["BACKSTOP_PAGES", "DEFAULT_EVERY_BYTES", "WalCheckpointer"]

DEFAULT_EVERY_BYTES = 4 * 1024 * 1024
BACKSTOP_PAGES = 4000  # `PRAGMA wal_autocheckpoint` of a connection whose WAL has this thread

_log = logging.getLogger(__name__)


class WalCheckpointer:
    """Checkpoints `path`'s WAL in the background after every `every_bytes` written to it.

    The thread starts at the first checkpoint it is asked for, so a store that is only read,
    or barely written, never starts one. Like the store's connection, it does not survive
    `fork()`: a child process opens its own store.
    """

    def __init__(self, path: str, *, synchronous: str, every_bytes: int = DEFAULT_EVERY_BYTES) -> None:
        if every_bytes <= 0:
            raise ValueError(f"every_bytes must be positive, not {every_bytes}")
        self.path = path
        # Opened later, from another thread: by absolute path, and only if the file is still
        # there (`mode=rw`), so a moved store never gets an empty twin at its old path.
        self._uri = Path(path).resolve().as_uri() + "?mode=rw"
        self.synchronous = synchronous  # the checkpoint's fsyncs follow its own connection's setting
        self.every_bytes = every_bytes
        self.checkpoints = 0  # completed by the thread
        self._pending_bytes = 0
        self._wanted = threading.Condition()
        self._requested = 0  # checkpoints asked for; the thread has done `_done` of them
        self._done = 0
        self._closing = False
        self._thread: threading.Thread | None = None

    def wrote(self, nbytes: int) -> None:
        """Count bytes just written to the WAL; ask for a checkpoint once enough have piled up.

        Called after a commit, so it never raises: without a thread (none can be started, as
        at interpreter shutdown), SQLite's autocheckpoint does the work inline as it always did.
        """
        with self._wanted:
            self._pending_bytes += nbytes
            if self._pending_bytes < self.every_bytes or self._closing:
                return
            self._pending_bytes = 0
            self._requested += 1
            if self._thread is None:
                thread = threading.Thread(target=self._run, name=f"wal-checkpoint {self.path}", daemon=True)
                try:
                    thread.start()
                except RuntimeError as exc:
                    _log.warning("no background WAL checkpoints for %s: %s", self.path, exc)
                    self._done = self._requested
                    return
                self._thread = thread
            self._wanted.notify()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every checkpoint asked for so far has finished; False on timeout."""
        with self._wanted:
            return self._wanted.wait_for(lambda: self._done >= self._requested or self._thread is None, timeout)

    def close(self) -> None:
        """Finish the checkpoints already asked for, if any, and stop the thread."""
        with self._wanted:
            self._closing = True
            self._wanted.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self._uri, uri=True, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:  # the writer's inline autocheckpoint still runs
            _log.warning("no background WAL checkpoints for %s: %s", self.path, exc)
            self._finish()
            return
        try:
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            while True:
                with self._wanted:
                    self._wanted.wait_for(lambda: self._closing or self._done < self._requested)
                    if self._done >= self._requested:  # closing with nothing asked for
                        return
                    target = self._requested
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self.checkpoints += 1
                except sqlite3.Error as exc:  # busy with another process's checkpoint, or I/O
                    _log.warning("background WAL checkpoint of %s failed: %s", self.path, exc)
                with self._wanted:
                    self._done = target  # one checkpoint covers every request made before it began
                    self._wanted.notify_all()
        finally:
            conn.close()
            self._finish()

    def _finish(self) -> None:
        with self._wanted:
            self._done = self._requested
            self._thread = None
            self._wanted.notify_all()
