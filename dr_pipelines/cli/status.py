"""`drp status`: the success metrics (success rate, RPO, last verification, last drill vs RTO)."""

from __future__ import annotations

import typer

from dr_pipelines.cli.common import emit_json, err, out, settings


def status(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Backup success rate, recovery point vs RPO, last verification, last drill vs RTO.

    The recovery point is the newest archived WAL segment when storage holds a WAL archive (age 0 when the
    source answers and is caught up), else the newest restorable backup.

    Exit code 0 when all targets are met, 1 otherwise.
    """
    from dr_pipelines.core.status import current_status
    from dr_pipelines.core.wal.status import server_wal_state

    s = settings()
    st = current_status(s, pg=server_wal_state(s.dsn)[0])  # a source that does not answer: storage alone
    if as_json:
        emit_json(st.as_dict())
    else:
        rate = f"{st.success_rate_30d:.1%}" if st.success_rate_30d is not None else "n/a"
        out.print(f"storage:            {st.storage}")
        damaged = f", {len(st.damaged)} DAMAGED" if st.damaged else ""
        out.print(f"backups:            {st.backups} complete{damaged}; success rate 30d {rate} "
                  f"({st.attempts_30d['succeeded']} ok, {st.attempts_30d['failed']} failed)")
        age = f"{st.newest_age_minutes} min old" if st.newest_age_minutes is not None else "none"
        out.print(f"newest restorable:  {st.newest_restorable or 'none'} ({age})")
        rpo = f"{st.recovery_point_age_minutes} min old" if st.recovery_point_age_minutes is not None else "none"
        out.print(f"recovery point:     {st.recovery_point} ({rpo}; RPO target {st.rpo_target_minutes} min: "
                  f"{'met' if st.rpo_met else 'MISSED'})", highlight=False)
        v = st.last_verification
        out.print(f"last verification:  {v['backup_id'] + (' passed' if v['passed'] else ' FAILED') if v else 'never'}")
        d = st.last_drill
        if d:
            out.print(f"last drill:         {d['month']} {'passed' if d['passed'] else 'FAILED'}, "
                      f"RTO {d['rto_seconds'] / 60:.1f} min (target {st.rto_target_minutes} min)"
                      + (f", RPO {d['rpo_seconds'] / 60:.1f} min" if d.get("rpo_seconds") is not None else "")
                      + (" (PITR)" if d.get("kind") == "base" else ""))
        else:
            out.print("last drill:         never")
        for p in st.problems:
            err.print(f"problem: {p}")
    if not st.ok:
        raise typer.Exit(1)
