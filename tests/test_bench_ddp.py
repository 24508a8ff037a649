"""The DDP epoch-time benchmark: reading RecBole's own epoch lines, and its argument checks.

The runs it makes are ``run_recbole.py`` and ``run_recbole.py --nproc=2``, both covered end to end
by tests/test_distributed.py; here the parts that are the benchmark's own.
"""

from types import SimpleNamespace

import pytest
from recbole.trainer import Trainer

from recbole_mamba.bench import ddp


def _recbole_line(epoch: int, seconds: float, loss: float) -> str:
    """The training line RecBole's Trainer logs, made by RecBole's own formatter (with colours)."""
    trainer = SimpleNamespace(config={"loss_decimal_place": 4})
    return Trainer._generate_train_loss_output(trainer, epoch, 100.0, 100.0 + seconds, loss)


def test_epoch_times_reads_recbole_lines_in_epoch_order_with_or_without_colours():
    lines = [_recbole_line(1, 9.87, 3.2), "02 Dec 01:00    INFO  epoch 1 evaluating [time: 3.00s, valid_score: 0.1]",
             _recbole_line(0, 15.2, 4.1), _recbole_line(2, 10.5, 3.0)]
    assert "\x1b[" in lines[0]  # the formatter colours; the parser must not depend on it
    log = "\n".join("02 Dec 01:00    INFO  " + line for line in lines)
    assert ddp.epoch_times(log) == [15.2, 9.87, 10.5]
    assert ddp.epoch_times(ddp.ANSI.sub("", log)) == [15.2, 9.87, 10.5]
    assert ddp.steady_median([15.2, 9.87, 10.5]) == pytest.approx((9.87 + 10.5) / 2)


def test_steady_median_needs_two_epochs():
    with pytest.raises(ValueError, match="at least 2 logged epochs"):
        ddp.steady_median([12.0])


@pytest.mark.parametrize("argv, message", [
    (["--procs", "1"], "--procs must be >= 2"),
    (["--epochs", "1"], "--epochs must be >= 2"),
    (["--models", " , "], "--models is empty"),
])
def test_bad_arguments_are_refused_before_any_run(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        ddp.main([*argv, "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
