"""The pacer: windows end on the shared clock's tick nearest them, never before it,
and the streams due at one tick share one wake-up."""

import threading
import time

from app.pacing import Pacer


def threaded_pacer(window: float, made: list) -> Pacer:
    def make_event():
        event = threading.Event()
        made.append(event)
        return event

    def start_task(target):
        threading.Thread(target=target, daemon=True).start()

    return Pacer(start_task, time.sleep, make_event, window)


def test_a_wait_ends_at_the_tick_nearest_its_moment_and_never_before_it():
    pacer = threaded_pacer(0.04, [])
    assert pacer.tick == 0.02  # half the window
    for offset in (0.031, 0.045, 0.049):
        moment = time.monotonic() + offset
        tick = round(moment / pacer.tick) * pacer.tick
        # Nearest: within a quarter of the window of the moment asked for.
        assert abs(tick - moment) <= 0.01 + 1e-9
        pacer.wait_until(moment)
        assert time.monotonic() >= tick


def test_waits_due_at_one_tick_share_one_event():
    made: list = []
    pacer = threaded_pacer(0.2, made)  # ticks 100 ms apart
    base = (round(time.monotonic() / pacer.tick) + 3) * pacer.tick
    woken = []
    waiters = [
        threading.Thread(target=lambda m=m: woken.append(pacer.wait_until(m) or m))
        for m in (base - 0.01, base, base + 0.01)
    ]
    for waiter in waiters:
        waiter.start()
    for waiter in waiters:
        waiter.join()
    assert len(woken) == 3
    assert len(made) == 1
    assert time.monotonic() >= base


def test_a_moment_whose_tick_has_passed_returns_at_once():
    made: list = []
    pacer = threaded_pacer(0.04, made)
    pacer.wait_until(time.monotonic() - 1)
    assert made == []
