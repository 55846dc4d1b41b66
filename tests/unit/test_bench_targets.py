"""bench/run.py's pure parts: pgbench parsing, storm command lines, secrets, target verdicts."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from pgfunnel.proto.auth import md5_response, parse_scram_secret, scram_keys

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


run = _load("run")
idle_rss = _load("idle_rss")


def cell(tps: float | None, cpu: float | None) -> object:
    return run.Cell(
        runs=1,
        ok=1,
        tps=tps,
        tps_min=tps,
        tps_max=tps,
        latency_ms=1.0,
        cpu_us_per_xact=cpu,
        cpu_percent=50.0,
        failed=0,
        note="",
    )


def pair(tps_ratio: float, cpu_ratio: float) -> dict[str, object]:
    """PgBouncer at 1000 TPS and 10 µs/xact, pgfunnel at the given ratios of that."""
    return {"pgbouncer": cell(1000.0, 10.0), "pgfunnel": cell(1000.0 * tps_ratio, 10 * cpu_ratio)}


def full_summary(
    select: tuple[float, float] = (1.2, 0.8),
    tpcb: tuple[float, float] = (1.0, 0.9),
    storm: tuple[float, float] = (1.0, 2.0),
    prepared_cpu: float = 1.05,
    tls: tuple[float, float] = (1.0, 1.0),
) -> dict[tuple[str, str, int], dict[str, object]]:
    summary: dict[tuple[str, str, int], dict[str, object]] = {}
    for protocol, clients in run.SELECT_TARGET_CELLS:
        summary[("select", protocol, clients)] = pair(*select)
    for protocol, clients in run.TPCB_TARGET_CELLS:
        summary[("tpcb", protocol, clients)] = pair(*tpcb)
    for auth, clients in run.STORM_TARGET_CELLS:
        summary[("storm", auth, clients)] = pair(*storm)
    for key in (*run.TLS_TARGET_CELLS, *run.TLS_STORM_TARGET_CELLS):
        summary[key] = pair(*tls)
    for clients in run.PREPARED_TARGET_CLIENTS:
        # -M prepared: pgfunnel alone (PgBouncer 1.18 cannot), against its -M extended cell
        base = summary[("select", "extended", clients)]["pgfunnel"]
        summary[("select", "prepared", clients)] = {
            "pgfunnel": cell(base.tps * 1.05, base.cpu_us_per_xact * prepared_cpu)  # type: ignore[attr-defined]
        }
    return summary


def idle(ours_kib: int, theirs_kib: int, held: int = 10_000) -> dict[str, object]:
    return {
        "pgbouncer": idle_rss.IdleResult(10_000, held, 10_000 - held, 8000, 8000 + theirs_kib, 3.0),
        "pgfunnel": idle_rss.IdleResult(10_000, held, 10_000 - held, 30000, 30000 + ours_kib, 3.0),
    }


def verdicts(summary: object, idle_results: object = None) -> dict[str, str]:
    lines = run.target_verdicts(summary, idle_results)
    assert len(lines) == 6
    names = ("select", "tpcb", "storm", "prepared", "tls", "idle")
    return dict(zip(names, lines, strict=True))


def test_every_target_met_when_every_cell_is() -> None:
    lines = verdicts(full_summary(), idle(9_000, 10_000))
    for name, line in lines.items():
        assert line.endswith(": MET"), (name, line)
    assert "TPS 1.20x PgBouncer (geometric mean, goal >= 1.10)" in lines["select"]
    assert "CPU/xact 0.80x (geometric mean, goal <= 0.85)" in lines["select"]
    assert "0.90 KiB" in lines["idle"] and "1.00 KiB" in lines["idle"]


def test_select_one_cell_below_one_fails_despite_a_high_mean() -> None:
    summary = full_summary(select=(1.5, 0.5))
    summary[("select", "extended", 1000)] = pair(0.99, 0.5)
    line = verdicts(summary)["select"]
    assert line.endswith(": NOT MET")
    assert "lowest cell 0.99x (extended, 1000 clients" in line


def test_select_cpu_above_085_fails() -> None:
    assert verdicts(full_summary(select=(1.2, 0.86)))["select"].endswith(": NOT MET")


def test_missing_cells_never_meet_a_target() -> None:
    summary = full_summary(select=(2.0, 0.1))
    del summary[("select", "simple", 10)]
    del summary[("storm", "scram-sha-256", 200)]
    lines = verdicts(summary)
    assert lines["select"].endswith("NOT MET (5 of 6 cells measured)")
    assert lines["storm"].endswith("NOT MET (3 of 4 cells measured)")
    assert lines["idle"].endswith("NOT MET (not measured for both poolers)")


def test_tpcb_needs_every_cell_within_cpu_and_tps() -> None:
    summary = full_summary()
    summary[("tpcb", "simple", 200)] = pair(1.1, 0.91)
    assert "highest CPU/xact 0.91x" in verdicts(summary)["tpcb"]
    assert verdicts(summary)["tpcb"].endswith(": NOT MET")
    summary[("tpcb", "simple", 200)] = pair(0.99, 0.5)
    assert verdicts(summary)["tpcb"].endswith(": NOT MET")
    # tpcb at 10 clients is no part of the target.
    summary[("tpcb", "simple", 200)] = pair(1.0, 0.9)
    summary[("tpcb", "simple", 10)] = pair(0.5, 3.0)
    assert verdicts(summary)["tpcb"].endswith(": MET")


def test_storm_below_pgbouncer_fails_and_names_the_cell() -> None:
    summary = full_summary()
    summary[("storm", "md5", 200)] = pair(0.59, 2.4)
    line = verdicts(summary)["storm"]
    assert "lowest TPS 0.59x PgBouncer (md5, 200 clients" in line
    assert line.endswith(": NOT MET")


def test_idle_more_memory_or_fewer_clients_fails() -> None:
    assert verdicts(full_summary(), idle(26_600, 9_400))["idle"].endswith(": NOT MET")
    short = verdicts(full_summary(), idle(100, 9_400, held=9_000))["idle"]
    assert "NOT MET (PgBouncer held 9000/10000, pgfunnel held 9000/10000" in short


def test_pgbench_output_with_and_without_reconnections() -> None:
    storm = "number of transactions actually processed: 12650\nlatency average = 11.860 ms\n"
    storm += "tps = 4216.123 (including reconnection times)\n"
    assert run.parse_pgbench(storm) == {
        "transactions": 12650.0,
        "latency_ms": 11.86,
        "tps": 4216.123,
    }
    plain = "tps = 27636.5 (without initial connection time)\n"
    assert run.parse_pgbench(plain) == {"tps": 27636.5}


@pytest.mark.parametrize("auth", run.STORM_AUTHS)
def test_storm_pgbench_reconnects_every_transaction_as_the_auth_role(auth: str) -> None:
    args = argparse.Namespace(jobs=2, duration=5)
    target = run.Target("direct", 5432)
    argv = run.pgbench_argv(target, run.STORM, auth, 200, args)
    assert argv[argv.index("-U") + 1] == run.STORM_USERS[auth]
    assert {"-C", "-S"} <= set(argv)
    assert argv[argv.index("-M") + 1] == "simple"
    # Logins are what a storm measures: no head start for direct runs.
    assert argv[argv.index("-T") + 1] == "5"


def test_storm_secrets_are_what_postgresql_stores() -> None:
    secrets = run.storm_secrets()
    md5 = secrets[run.STORM_USERS["md5"]]
    assert md5.startswith("md5") and len(md5) == 35
    parsed = parse_scram_secret(secrets[run.STORM_USERS["scram-sha-256"]])
    assert parsed is not None and parsed.iterations == 4096
    _, stored, server = scram_keys(run.SUPERUSER_PASSWORD, parsed.salt, parsed.iterations)
    assert (stored, server) == (parsed.stored_key, parsed.server_key)


def test_idle_clients_md5_answer_matches_the_poolers_check() -> None:
    salt = b"\x01\x02\x03\x04"
    assert idle_rss.md5_password("u", "pw", salt) == md5_response("u", "pw", salt)
    packet = idle_rss.startup_packet("u", "db")
    assert int.from_bytes(packet[:4], "big") == len(packet)
    assert b"user\0u\0database\0db\0" in packet


def test_args_refuse_storms_without_md5() -> None:
    with pytest.raises(SystemExit):
        run.parse_args(["--auth-type", "scram-sha-256"])
    with pytest.raises(SystemExit):  # the TLS storms are storms too
        run.parse_args(["--auth-type", "scram-sha-256", "--storms", "none"])
    args = run.parse_args(
        ["--auth-type", "scram-sha-256", "--storms", "none", "--tls-storm-clients", "0"]
    )
    assert args.storms == [] and args.tls_storm_clients == []


def test_prepared_is_held_against_pgfunnels_own_extended_cells() -> None:
    line = verdicts(full_summary())["prepared"]
    assert line.endswith(": MET")
    assert "TPS 1.05x at 200, 1.05x at 1000, highest CPU/xact 1.05x" in line
    assert "PgBouncer 1.25 not measured" in line
    assert verdicts(full_summary(prepared_cpu=1.11))["prepared"].endswith(": NOT MET")
    summary = full_summary()
    del summary[("select", "prepared", 1000)]
    assert verdicts(summary)["prepared"].endswith("NOT MET (1 of 2 cells measured)")


def test_tls_needs_pgbouncers_tps_at_no_more_cpu_in_every_cell() -> None:
    line = verdicts(full_summary())["tls"]
    assert line.endswith(": MET")
    assert "lowest TPS 1.00x PgBouncer" in line
    assert verdicts(full_summary(tls=(1.2, 1.01)))["tls"].endswith(": NOT MET")
    summary = full_summary(tls=(1.2, 0.9))
    summary[(run.TLS_STORM, run.TLS_STORM_AUTH, 200)] = pair(0.98, 0.9)
    line = verdicts(summary)["tls"]
    assert line.endswith(": NOT MET") and "(tls-storm, 200 clients" in line
    del summary[(run.TLS, run.TLS_PROTOCOL, 1000)]
    summary[(run.TLS_STORM, run.TLS_STORM_AUTH, 200)] = pair(1.1, 0.9)
    assert verdicts(summary)["tls"].endswith("NOT MET (3 of 4 cells measured)")


def test_tls_pgbench_cells() -> None:
    args = argparse.Namespace(jobs=2, duration=5)
    target = run.Target("pgfunnel", 6432, None)
    argv = run.pgbench_argv(target, run.TLS, run.TLS_PROTOCOL, 200, args)
    assert "-S" in argv and "-C" not in argv
    argv = run.pgbench_argv(target, run.TLS_STORM, run.TLS_STORM_AUTH, 50, args)
    assert {"-C", "-S"} <= set(argv)
    assert argv[argv.index("-U") + 1] == run.STORM_USERS[run.TLS_STORM_AUTH]
    defaults = run.parse_args([])
    assert (defaults.tls_clients, defaults.tls_storm_clients) == ([200, 1000], [50, 200])
    none = run.parse_args(["--tls-clients", "0", "--tls-storm-clients", "0"])
    assert (none.tls_clients, none.tls_storm_clients) == ([], [])


def test_cells_without_tls_have_none_at_either_end_for_either_pooler(tmp_path: Path) -> None:
    """PgBouncer 1.18's server_tls_sslmode defaults to disable, pgfunnel's to prefer: against
    the run's ssl=on PostgreSQL, only pgfunnel would pay for TLS unless the ini says."""
    plain = run.tls_settings(tmp_path / "plain", None)
    assert plain == {"server_tls_sslmode": "disable"}
    assert not (tmp_path / "plain").exists()
    both = run.tls_settings(tmp_path / "tls", (b"CERT", b"KEY"))
    assert (both["client_tls_sslmode"], both["server_tls_sslmode"]) == ("require", "require")
    assert Path(str(both["client_tls_key_file"])).read_bytes() == b"KEY"
    assert Path(str(both["client_tls_key_file"])).stat().st_mode & 0o777 == 0o600
