"""The reactor-lag probe on a task.Clock: how late its calls run is what it reports, the worst
of the last window, and nothing once the window has passed."""

from twisted.internet.task import Clock

from mediaproxy.monitoring.lag import ReactorLagProbe


def started(interval=0.25, window=5.0):
    clock = Clock()
    probe = ReactorLagProbe(clock, interval=interval, window=window)
    probe.startService()
    return clock, probe


def test_a_punctual_reactor_has_no_lag():
    clock, probe = started()
    assert probe.worst() == 0.0
    clock.pump([0.25] * 40)
    assert probe.worst() == 0.0


def test_a_stall_is_reported_for_the_window_then_forgotten():
    clock, probe = started()
    clock.advance(0.25)
    clock.advance(1.75)            # the reactor held for 1.5 s past the next probe's due time
    assert probe.worst() == 1.5
    clock.pump([0.25] * 19)        # 4.75 s later: still in the 5 s window
    assert probe.worst() == 1.5
    clock.pump([0.25] * 2)
    assert probe.worst() == 0.0


def test_an_overdue_probe_counts_before_it_runs():
    clock, probe = started()
    clock.advance(0.25)
    clock.rightNow += 3.0          # time passes without the clock running its calls
    assert probe.worst() == 2.75   # the probe due at 0.5 has not run at 3.25


def test_the_samples_kept_are_bounded_by_the_window():
    clock, probe = started(interval=0.25, window=5.0)
    clock.pump([0.25] * 1000)
    assert len(probe._samples) <= 22


def test_a_stopped_probe_schedules_nothing():
    clock, probe = started()
    probe.stopService()
    assert clock.getDelayedCalls() == []
    assert probe.worst() == 0.0
