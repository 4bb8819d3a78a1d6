"""`harness query RUN_DIR... "SQL"`: ad-hoc SQL over the records of run folders, as a real process."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from harness_helpers import harness
from recordgen import record, write_run


def _runs(tmp_path: Path) -> tuple[Path, Path, list[dict], list[dict]]:
    a_recs = [record(t_s=0.1 * i, host=f"http://h{i % 3}:1/v1", ttft_ms=100.0 + i, seq=i) for i in range(30)]
    b_recs = [
        record(t_s=0.1 * i, run_id="run-b", ok=i % 4 != 0, error=None if i % 4 else "stall", seq=i)
        for i in range(12)
    ]
    return (
        write_run(tmp_path / "a", a_recs),
        write_run(tmp_path / "b", b_recs, run_id="run-b"),
        a_recs,
        b_recs,
    )


def test_query_prints_a_table_over_several_runs(tmp_path: Path) -> None:
    a, b, a_recs, b_recs = _runs(tmp_path)
    done = harness(
        "query",
        str(a),
        str(b),
        "SELECT run_index, count(*) AS n, count(*) FILTER (WHERE NOT ok) AS failed "
        "FROM records GROUP BY run_index ORDER BY run_index",
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["run_index", "n", "failed"]
    assert lines[2].split() == ["0", str(len(a_recs)), "0"]
    assert lines[3].split() == ["1", str(len(b_recs)), str(sum(not r["ok"] for r in b_recs))]


def test_query_percentile_and_every_record_field(tmp_path: Path) -> None:
    a, _, a_recs, _ = _runs(tmp_path)
    done = harness(
        "query",
        str(a),
        "SELECT quantile_cont(ttft_ms, 0.9) AS p90, max(len(event_offsets_us)) AS events, "
        "count(*) FILTER (WHERE text IS NULL) AS no_text, min(error_detail) AS detail FROM records",
    )
    assert done.returncode == 0, done.stderr
    p90, events, no_text, detail = done.stdout.splitlines()[2].split()
    assert float(p90) == float(f"{np.percentile([r['ttft_ms'] for r in a_recs], 90):.6g}")
    assert int(events) == max(len(r["event_offsets_us"]) for r in a_recs)
    assert int(no_text) == len(a_recs) and detail == "-"


def test_query_writes_csv(tmp_path: Path) -> None:
    a, _, a_recs, _ = _runs(tmp_path)
    out = tmp_path / "hosts.csv"
    done = harness(
        "query",
        str(a),
        "SELECT host, count(*) AS n FROM records GROUP BY host ORDER BY host",
        "--csv",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["host", "n"]
    expected = {h: sum(r["host"] == h for r in a_recs) for h in {r["host"] for r in a_recs}}
    assert {h: int(n) for h, n in rows[1:]} == expected


def test_query_reads_worker_spools_and_skips_a_cut_line(tmp_path: Path) -> None:
    run = tmp_path / "fleet"
    (run / "spool").mkdir(parents=True)
    total = 0
    for w in range(5):
        recs = [record(t_s=0.1 * i, worker=f"w:{w}", seq=i) for i in range(w + 3)]
        total += len(recs)
        tail = b'{"run_id": "cut' if w == 2 else b""
        write_run(tmp_path / f"tmp{w}", recs, tail=tail)
        (tmp_path / f"tmp{w}" / "records.jsonl").rename(run / "spool" / f"w{w}.records.jsonl")
    done = harness("query", str(run), "SELECT count(*) AS n, count(DISTINCT worker) AS workers FROM records")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[2].split() == [str(total), "5"]
    assert "skipped 1 broken line" in done.stderr and "w2.records.jsonl" in done.stderr


def test_bad_sql_is_one_line_and_exit_2(tmp_path: Path) -> None:
    a, _, _, _ = _runs(tmp_path)
    for sql in ("SELEC 1", "SELECT nope FROM records", "SELECT * FROM other_table"):
        done = harness("query", str(a), sql)
        assert done.returncode == 2, (sql, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        assert done.stderr.startswith("harness: query: ")
    missing = harness("query", str(tmp_path / "nope"), "SELECT 1")
    assert missing.returncode == 2 and "no such folder" in missing.stderr
    only_sql = harness("query", "SELECT 1")
    assert only_sql.returncode == 2 and "at least one run folder" in only_sql.stderr
