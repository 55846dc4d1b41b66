"""`make demo` in miniature: 100 clients at max_connections=20 fail direct, pass via pgfunnel."""

from __future__ import annotations

from pgfunnel.demo import TOO_MANY_CONNECTIONS, run_demo


def test_direct_clients_hit_53300_and_pooled_clients_all_finish() -> None:
    result = run_demo(clients=100, max_connections=20, pool_size=15)

    assert result.direct.count(TOO_MANY_CONNECTIONS) > 0, result.direct.failures
    refusals = {message for (state, message) in result.direct.failures if state == "53300"}
    assert "sorry, too many clients already" in refusals
    assert result.pooled.error is None, result.pooled.error
    assert result.pooled.failed == 0, result.pooled.failures
    assert result.pooled.succeeded == result.pooled.clients == 100
    assert result.pooled.transactions > result.direct.transactions
    assert result.ok
