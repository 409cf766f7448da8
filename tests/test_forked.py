"""promptkd.demo.forked: a function run in a forked child (what the demo and the CLI tests use)."""
import os
import signal
import sys
import time

import pytest

from promptkd.demo import forked


def test_run_gives_exit_code_and_both_streams():
    def fn():
        print("out")
        sys.stderr.write("err\n")
        sys.exit(3)
    result = forked.run(fn)
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert forked.run(lambda: None).returncode == 0
    crashed = forked.run(lambda: 1 / 0)
    assert crashed.returncode == 1 and "ZeroDivisionError" in crashed.stderr and "Traceback" in crashed.stderr


def test_the_child_is_a_process_of_its_own():
    marker = []
    result = forked.run(lambda: (marker.append(1), print(os.getpid())))
    assert marker == [] and int(result.stdout) != os.getpid()


def test_until_kills_the_child_mid_way():
    def count():
        for i in range(1000):
            print(i, flush=True)
            time.sleep(0.01)
    result = forked.run(count, until=lambda out: "5\n" in out)
    assert result.returncode == -signal.SIGKILL
    assert result.stdout.split()[:6] == ["0", "1", "2", "3", "4", "5"] and "999" not in result.stdout


def test_timeout_kills_and_raises():
    with pytest.raises(TimeoutError):
        forked.run(lambda: time.sleep(30), timeout=0.5)


def test_lanes_run_side_by_side_in_order_and_a_failure_stops_the_rest(tmp_path):
    lines = []
    on_line = lambda name, stream, line: lines.append((name, stream, line))  # noqa: E731
    forked.run_lanes([[forked.Step("a", lambda: print("a1\na2")), forked.Step("b", lambda: print("b", end=""))],
                      [forked.Step("c", lambda: sys.stderr.write("c\n"))]], on_line)
    assert [x for x in lines if x[0] in "ab"] == [("a", "stdout", "a1"), ("a", "stdout", "a2"), ("b", "stdout", "b")]
    assert ("c", "stderr", "c") in lines

    # side by side: lane 2 finishes while lane 1 waits for it; lane 1's failure stops lane 2
    flag = tmp_path / "flag"
    started = time.monotonic()
    with pytest.raises(forked.ChildFailed) as err:
        forked.run_lanes([[forked.Step("waits", lambda: [time.sleep(0.05) for _ in range(200) if not flag.exists()]),
                           forked.Step("fails", lambda: sys.exit(4)),
                           forked.Step("never", lambda: flag.with_name("never").touch())],
                          [forked.Step("flags", flag.touch), forked.Step("sleeps", lambda: time.sleep(60))]],
                         lambda *a: None)
    assert (err.value.name, err.value.code) == ("fails", 4)
    assert time.monotonic() - started < 20  # "sleeps" was stopped, not waited for
    assert not flag.with_name("never").exists()
