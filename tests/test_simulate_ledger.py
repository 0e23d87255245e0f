"""The simulator's correctness ledger: what it records, and its check against the gateway's
deliveries, on hand-made inputs (each problem category must be found; each legitimate
redelivery must not be taken for one)."""

from __future__ import annotations

import pytest

from mdmgate.simulate.ledger import (
    CONFIRMED,
    IN_DOUBT,
    GatewayDelivery,
    Ledger,
    LedgerResult,
    Observed,
    compare,
)

DEVICE = "dev-1"


def check(
    observed: dict[str, Observed], deliveries: list[GatewayDelivery], device: str = DEVICE
) -> LedgerResult:
    result = LedgerResult()
    compare(device, observed, deliveries, result)
    return result


def problems(result: LedgerResult) -> dict[str, int]:
    return {k: v for k, v in result.counts.items() if v and k in _PROBLEMS}


_PROBLEMS = ("lost", "duplicated", "misattributed", "mismatched", "phantom")


def seen(*answers: tuple[str, str], received: int = 1, **counts: int) -> Observed:
    return Observed("Get", received, answers, **counts)


def test_a_clean_history_passes() -> None:
    result = check(
        {
            "a": seen(("acknowledged", CONFIRMED)),
            "b": seen(("error", CONFIRMED)),
            "c": seen(("not_now", CONFIRMED)),
            "d": seen(("accepted", CONFIRMED)),
        },
        [
            GatewayDelivery("a", "acknowledged", "200"),
            GatewayDelivery("b", "error", "500"),
            GatewayDelivery("c", "not_now", "NotNow"),
            GatewayDelivery("d", "accepted", "202"),
            GatewayDelivery("e", "queued"),
        ],
    )
    assert result.clean
    assert result.counts["ok"] == 2
    assert (result.counts["not_now"], result.counts["accepted"]) == (1, 1)
    assert result.counts["unfinished"] == 1
    assert result.problems == []


def test_a_confirmed_answer_the_gateway_does_not_hold_is_lost() -> None:
    result = check({"a": seen(("acknowledged", CONFIRMED))}, [GatewayDelivery("a", "sent")])
    assert problems(result) == {"lost": 1}
    assert not result.clean
    (problem,) = result.problems
    assert (problem.category, problem.device_id, problem.command_id) == ("lost", DEVICE, "a")
    assert "acknowledged (confirmed)" in problem.detail


def test_an_answer_in_doubt_the_gateway_does_not_hold_is_not_lost() -> None:
    # The message carrying it failed: the gateway may never have seen it.
    result = check({"a": seen(("acknowledged", IN_DOUBT))}, [GatewayDelivery("a", "sent")])
    assert result.clean
    assert result.counts["unfinished"] == 1


def test_a_command_handed_out_again_after_a_confirmed_answer_is_duplicated() -> None:
    result = check(
        {"a": seen(("acknowledged", CONFIRMED), received=2, duplicates=1)},
        [GatewayDelivery("a", "acknowledged", "200")],
    )
    assert problems(result) == {"duplicated": 1}


def test_a_command_received_but_not_queued_for_the_device_is_misattributed() -> None:
    result = check({"other": seen(("acknowledged", CONFIRMED))}, [])
    assert problems(result) == {"misattributed": 1}
    assert "no such delivery" in result.problems[0].detail


def test_an_answer_stored_for_a_device_that_never_received_it_is_misattributed() -> None:
    result = check({}, [GatewayDelivery("a", "acknowledged", "200")])
    assert problems(result) == {"misattributed": 1}


def test_an_answer_stored_other_than_given_is_mismatched() -> None:
    result = check({"a": seen(("error", CONFIRMED))}, [GatewayDelivery("a", "acknowledged", "200")])
    assert problems(result) == {"mismatched": 1}


def test_an_answer_stored_for_a_command_the_device_never_answered_is_phantom() -> None:
    result = check({"a": seen()}, [GatewayDelivery("a", "acknowledged", "200")])
    assert problems(result) == {"phantom": 1}


def test_an_earlier_answer_may_stand_when_the_last_one_is_in_doubt() -> None:
    # NotNow reached the gateway, the final answer's message failed: NotNow is stored.
    result = check(
        {"a": seen(("not_now", CONFIRMED), ("acknowledged", IN_DOUBT), received=2, retried=1)},
        [GatewayDelivery("a", "not_now", "NotNow")],
    )
    assert result.clean
    assert result.counts["retried"] == 1


def test_given_up_without_an_answer_is_failed_not_a_problem() -> None:
    result = check({"a": seen(received=5, retried=4)}, [GatewayDelivery("a", "failed", "5")])
    assert result.clean
    assert (result.counts["failed"], result.counts["retried"]) == (1, 4)


def test_given_up_although_the_answer_arrived_is_lost() -> None:
    result = check({"a": seen(("acknowledged", CONFIRMED))}, [GatewayDelivery("a", "failed")])
    assert problems(result) == {"lost": 1}


def test_details_are_bounded_but_every_problem_is_counted() -> None:
    result = LedgerResult()
    for n in range(50):
        compare(f"d{n}", {}, [GatewayDelivery("x", "acknowledged")], result)
    assert result.counts["misattributed"] == 50
    assert len(result.problems) == 20
    assert result.devices_checked == 50


# -- recording ------------------------------------------------------------------------------


def test_answers_are_confirmed_by_the_exchange_that_carried_them() -> None:
    ledger = Ledger()
    ledger.received(DEVICE, "a", "Get")
    ledger.answered(DEVICE, "a", "acknowledged")
    ledger.exchange_ok(DEVICE)
    ledger.received(DEVICE, "b", "Get")
    ledger.answered(DEVICE, "b", "error")
    ledger.exchange_failed(DEVICE)
    observed = ledger.observed(DEVICE)
    assert observed["a"].answers == (("acknowledged", CONFIRMED),)
    assert observed["b"].answers == (("error", IN_DOUBT),)
    assert ledger.waiting(DEVICE)  # b may come again


def test_redelivery_after_not_now_or_doubt_is_retried_after_confirmation_duplicated() -> None:
    ledger = Ledger()
    ledger.received(DEVICE, "nn", "Get")
    ledger.answered(DEVICE, "nn", "not_now")
    ledger.received(DEVICE, "doubt", "Get")
    ledger.answered(DEVICE, "doubt", "acknowledged")
    ledger.exchange_failed(DEVICE)
    ledger.received(DEVICE, "silent", "Get")  # the device went silent: never answered
    ledger.session_ended(DEVICE)
    ledger.received(DEVICE, "ok", "Get")
    ledger.answered(DEVICE, "ok", "acknowledged")
    ledger.exchange_ok(DEVICE)
    for command in ("nn", "doubt", "silent", "ok"):
        ledger.received(DEVICE, command, "Get")
    observed = ledger.observed(DEVICE)
    assert [observed[c].retried for c in ("nn", "doubt", "silent", "ok")] == [1, 1, 1, 0]
    assert [observed[c].duplicates for c in ("nn", "doubt", "silent", "ok")] == [0, 0, 0, 1]


def test_an_answer_recorded_after_its_reply_counts_as_confirmed_for_redelivery() -> None:
    # A device may record its answer once the gateway took it; the reply that took it
    # carries the next command, and the same command again there is a duplicate.
    ledger = Ledger()
    ledger.received(DEVICE, "a", "DeviceInformation")
    ledger.exchange_ok(DEVICE)
    ledger.answered(DEVICE, "a", "acknowledged")
    ledger.received(DEVICE, "a", "DeviceInformation")
    assert ledger.observed(DEVICE)["a"].duplicates == 1


def test_unknown_answers_are_refused() -> None:
    with pytest.raises(ValueError, match="answer 'done'"):
        Ledger().answered(DEVICE, "a", "done")


def test_a_recorded_run_checks_clean_against_matching_deliveries() -> None:
    ledger = Ledger()
    ledger.received(DEVICE, "a", "Get")
    ledger.answered(DEVICE, "a", "accepted")
    ledger.exchange_ok(DEVICE)
    assert ledger.waiting(DEVICE)  # the outcome is still to come
    ledger.answered(DEVICE, "a", "acknowledged")  # Alert 1226, a later session
    ledger.exchange_ok(DEVICE)
    assert not ledger.waiting(DEVICE)
    result = check(ledger.observed(DEVICE), [GatewayDelivery("a", "acknowledged", "1226")])
    assert result.clean
    assert result.counts["ok"] == 1
