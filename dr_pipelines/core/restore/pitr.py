"""Point-in-time restore (issue 13 item 6): a base backup plus archived WAL, recovered to a target.

The steps, each refusing before the server starts: parse the target (targets.py), choose the
newest base backup that stopped before it (never after: no silent overshoot), then, at the same
time, check every WAL segment from the base's start to the target in storage and extract the base
into the data directory under a lease (a killed restore is swept by the next command,
core/pg/leases.py). The check (listing and re-hashing stored WAL) and the extraction (decrypting
and unpacking the base) are independent until the server starts, so the check's time hides behind
the extraction's; a gap or corrupt segment it finds abandons the extraction at its next tar member,
removes what was extracted and is raised naming the segment, before PostgreSQL starts. Then
recover and promote with archiving off (recovery.py). Whatever fails, nothing half-restored is left
running or on disk.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.pg.leases import CLUSTERS, FILLS_DATA_DIR, sweep_leftovers, take_lease
from dr_pipelines.core.progress import Progress
from dr_pipelines.core.restore.recovery import (
    RecoveryResult,
    configure_recovery,
    recover,
    socket_dir_in,
)
from dr_pipelines.core.restore.targets import (
    BaseBackup,
    PitrError,
    RecoveryTarget,
    WalPlan,
    check_wal,
    choose_base_backup,
    recovery_lineage,
    target_lsn_of,
)
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.wal.names import parse_lsn
from dr_pipelines.core.wal.restore import WalFetcher

__all__ = ["BaseBackup", "PitrError", "PitrResult", "RecoveryResult", "RecoveryTarget", "check_wal",
           "choose_base_backup", "configure_recovery", "extract_from_storage", "recover", "restore_to_point"]

Extract = Callable[[BaseBackup, Path], None]  # puts the base backup's files into an empty data directory
DEFAULT_PREFETCH = 8


def extract_from_storage(storage: Storage, identities: Sequence[object], progress: Progress | None = None, *,
                         durable: bool = True,
                         leave_out: Callable[[BaseBackup], Callable[[str], bool] | None] | None = None) -> Extract:
    """The base backup's tar from storage, verified and unpacked (core/restore/physical.py, the base backup work).
    ``durable`` False for a throwaway that runs with fsync off: nothing is flushed while extracting.
    ``leave_out``: given the base backup chosen, which files to create empty (core/restore/partial.py), or None."""
    def extract(base: BaseBackup, data_dir: Path) -> None:
        from dr_pipelines.core.restore.physical import extract_base_backup  # type: ignore[import-not-found]

        extract_base_backup(storage, base.entry, identities, data_dir, progress=progress, durable=durable,
                            leave_out=leave_out(base) if leave_out else None)
    return extract


def _extract_while_checking(extract: Extract, base: BaseBackup, data_dir: Path, checking: Future[WalPlan]) -> WalPlan:
    """``extract`` while ``checking`` runs; the check's failure abandons the extraction and is raised (the
    caller removes the directory), else the checked plan once both are done."""
    from dr_pipelines.core.restore.physical import abandon_extraction_if

    def stop_if_refused() -> None:
        if checking.done() and checking.exception() is not None:
            raise checking.exception()  # type: ignore[misc]

    try:
        with abandon_extraction_if(stop_if_refused):
            extract(base, data_dir)
    except BaseException:
        if checking.done() and checking.exception() is not None:
            raise checking.exception() from None  # type: ignore[misc]  # the refusal, not how extraction ended
        checking.cancel()
        raise
    return checking.result()


@dataclass(frozen=True)
class PitrResult:
    base: BaseBackup
    target: RecoveryTarget
    wal: WalPlan
    recovery: RecoveryResult
    followed: int = 1  # the timeline recovery followed (the promotion then begins a new one)


def restore_to_point(storage: Storage, target: RecoveryTarget, data_dir: Path, *, entries: Sequence[Any],
                     extract: Extract, work_dir: Path, identities: Sequence[object], prefetch: int = DEFAULT_PREFETCH,
                     keep_running: bool = True,
                     port: int | None = None, progress: Progress | None = None, timeline: int | None = None,
                     log: Callable[[str], None] | None = None,
                     settings: Mapping[str, str] | None = None, pause: bool = False,
                     socket_only: bool = False) -> PitrResult:
    """Restore ``data_dir`` (new or empty) to ``target``; see the module docstring.

    ``timeline``: recover along this timeline (recovery_target_timeline = N: a target on an older timeline
    that went on after a promote); default the newest archived one. Either way the base backup is one
    whose recovery can follow it, and the WAL checked is that timeline's path.

    This process serves the recovery's WAL fetches (``identities`` decrypt them, core/wal/restore.py
    WalFetcher); ``keep_running`` False leaves the promoted cluster stopped. ``settings``: extra
    server settings kept after promotion (a throwaway's FAST_THROWAWAY, core/restore/throwaway.py).
    ``pause``: stop at the target as a read-only hot standby, not promoted (recovery.py; a target short of
    the archive's end, kept running); the result's timeline is then the one replayed at the target.
    ``socket_only``: promoted, reached over its private socket only, no password (recovery.py).
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    for line in sweep_leftovers(work_dir):
        if log:
            log(f"removed leftover {line}")
    target_lsn = target_lsn_of(storage, target)
    lineage = recovery_lineage(storage, timeline)
    base = choose_base_backup(entries, target, target_lsn=target_lsn, lineage=lineage)
    if target.kind == "immediate":
        target_lsn = base.stop_lsn  # only the base's own WAL is checked and replayed
    data_dir = data_dir.resolve()
    if data_dir.exists() and any(data_dir.iterdir()):
        raise PitrError(f"data directory {data_dir} is not empty", fix="pass a new or empty directory")
    if log:
        log(f"restoring {base.describe()} to {target.describe()} along timeline {lineage.timeline}; "
            f"checking the WAL from {base.wal_start} while extracting")
    created = not data_dir.exists()
    # The lease covers the extraction too: a kill -9 mid-extract leaves files but no passfile yet, so the lease
    # says the directory was new or empty and the next command's sweep removes what it holds.
    lease = take_lease(work_dir, CLUSTERS, "pitr", mode=0o711, data_dir=str(data_dir), created_dir=created,
                       **{FILLS_DATA_DIR: True})
    try:
        spool = lease.path / "spool"  # WAL in clear: 0700, only this process uses it, gone with the lease
        spool.mkdir(mode=0o700)
        data_dir.mkdir(mode=0o700, exist_ok=True)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="drp-wal-check") as pool:
            checking = pool.submit(check_wal, storage, base, target, target_lsn=target_lsn, timeline=lineage.timeline)
            plan = _extract_while_checking(extract, base, data_dir, checking)
        if log:
            log(f"WAL {plan.first}..{plan.last} checked")
            if plan.beyond:
                log(f"note: after {plan.last} (archived after the target time) the archive has "
                    f"{', '.join(plan.beyond)}: recovery reads that far only if no transaction committed in "
                    "between, and then stops there with an error")
        fetcher = WalFetcher(storage, identities, data_dir, spool=spool, prefetch=prefetch)
        result = recover(data_dir, target, fetcher=fetcher, start_lsn=base.start_lsn, target_lsn=target_lsn,
                         keep_running=keep_running, port=port, progress=progress, socket_dir=socket_dir_in(lease.path),
                         timeline=lineage.setting(), settings=settings, pause=pause, socket_only=socket_only)
        if result.paused:
            result = replace(result, timeline=lineage.timeline_at(parse_lsn(result.replayed_to)))
    except BaseException:
        LocalCluster(data_dir=data_dir, port=0).remove(keep_dir=not created)
        raise
    finally:
        lease.release()
    return PitrResult(base=base, target=target, wal=plan, recovery=result, followed=lineage.timeline)
