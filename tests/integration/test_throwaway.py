"""The throwaway cluster fixture itself: it starts, honours settings, and restarts."""

from pgfunnel.throwaway import Cluster


def test_cluster_honours_max_connections(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = make_cluster(max_connections=17)
    assert cluster.psql("SHOW max_connections") == "17"


def test_shared_cluster_accepts_password_login(pg: Cluster) -> None:
    import psycopg

    with psycopg.connect(pg.dsn()) as conn:
        assert conn.execute("SELECT 1 + 1").fetchone() == (2,)
