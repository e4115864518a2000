"""`train.cli.program`: every program's main; its argument check, output and exit codes."""

import signal

import pytest
from absl import app, logging

from train import checkpointing, cli, config_checks, loop
from train.data import sources


class OwnError(Exception):
    pass


@pytest.fixture(autouse=True)
def _logging_as_it_was():
    """`program` turns absl's logs down (`cli.quiet_logs`) for the process: undone here, so
    the tests after these still see INFO lines."""
    verbosity, filters = logging.get_verbosity(), list(logging.get_absl_logger().filters)
    yield
    logging.set_verbosity(verbosity)
    logging.get_absl_logger().filters[:] = filters


def _exit(main, argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code, capsys.readouterr()


def test_prints_what_run_returns_given_its_arguments(capsys):
    main = cli.program(lambda args: f"got {' '.join(args)}", args=2)
    main(["prog", "a.png", "b.png"])
    assert capsys.readouterr().out == "got a.png b.png\n"


def test_other_argument_counts_are_usage_errors():
    main = cli.program(lambda args: "", args=2, usage="usage: prog IN OUT")
    with pytest.raises(app.UsageError, match="usage: prog IN OUT"):
        main(["prog", "a.png"])
    with pytest.raises(app.UsageError, match="unexpected arguments: x"):
        cli.program(lambda args: "")(["prog", "x"])


@pytest.mark.parametrize(
    "error",
    [
        config_checks.ConfigError("config.x=1 is invalid"),
        sources.DataError("no data in /d"),
        checkpointing.CheckpointError("damaged"),
        OwnError("bad file"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(error, capsys):
    def run(args):
        raise error

    code, out = _exit(cli.program(run, errors=(OwnError,)), ["prog"], capsys)
    assert code == 2 and out.err == f"error: {error}\n" and out.out == ""


def test_an_error_not_named_is_not_caught():
    def run(args):
        raise OwnError("a bug")

    with pytest.raises(OwnError):
        cli.program(run)(["prog"])


def test_a_non_finite_run_exits_3_and_a_stopped_one_128_plus_the_signal(capsys):
    def non_finite(args):
        raise loop.NonFiniteError("non-finite loss at step 3")

    code, out = _exit(cli.program(non_finite), ["prog"], capsys)
    assert code == 3 and out.err == "error: non-finite loss at step 3\n"

    def stopped(args):
        raise loop.Interrupted(signal.SIGTERM, 7, "/w/checkpoints")

    code, out = _exit(cli.program(stopped), ["prog"], capsys)
    assert code == 128 + signal.SIGTERM and "stopped by SIGTERM after step 7" in out.err
