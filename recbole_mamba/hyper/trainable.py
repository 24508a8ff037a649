"""The Ray Tune trainable: one RecBole training run that reports every epoch and checkpoints.

RecBole's own ``objective_function`` reports once per trial (after training), so a scheduler
such as ASHA cannot stop a bad trial early, and its ``tune.report(**dict)`` is gone in Ray 2.x.
Here RecBole's ``Trainer.fit`` runs unchanged, and its ``callback_fn`` (called after each
validation) reports the epoch's validation metrics with a checkpoint (model, optimizer, early
stopping counters) through ``ray.tune.report``. A trial restarted after a failure or a
preemption resumes from its last checkpoint.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FILE = "trial_state.pt"


def attempts_file(experiment_dir: Path, trial_id: str) -> Path:
    """Where a trial records its starts (first run, retries, resumes)."""
    return Path(experiment_dir) / "attempts" / f"{trial_id}.txt"


def _plain(value: Any) -> Any:
    """numpy scalars -> Python numbers (for reports and weights-only checkpoints)."""
    return value.item() if hasattr(value, "item") else value


def set_threads(cpus: float) -> None:
    """Use the trial's CPU share in torch and numba (Ray gives each trial ``cpus`` cores)."""
    n = max(1, int(cpus))
    torch.set_num_threads(n)
    try:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except Exception:  # numba missing or already fixed: torch's setting is what matters most
        pass


def recbole_trainable(trial_config: dict, *, model: str, dataset: str, config_files: list[str],
                      base_config: dict, save_model: bool, cpus: float, experiment_dir: str) -> None:
    """Train ``model`` on ``dataset`` with ``base_config`` updated by ``trial_config``.

    Reports ``{valid metrics..., "epoch": e}`` after every validation (``eval_step`` epochs).
    Must run inside a Ray Tune trial. ``experiment_dir`` (the experiment's storage folder) gets
    ``attempts/<trial_id>.txt`` (one line per start of the trial) and, with ``save_model``,
    RecBole's checkpoints under ``models/<trial_id>/``.
    """
    from ray import tune
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_trainer, init_logger, init_seed

    import recbole_mamba  # noqa: F401  (compat fixes and registration inside the worker)
    from recbole_mamba.registry import get_model

    set_threads(cpus)
    trial_id = tune.get_context().get_trial_id() or "local"
    experiment = Path(experiment_dir)
    config_dict = {**base_config, **trial_config,
                   "checkpoint_dir": str(experiment / "models" / trial_id), "show_progress": False}
    checkpoint = tune.get_checkpoint()
    attempts = attempts_file(experiment, trial_id)  # one line per start: retries show in the table
    attempts.parent.mkdir(parents=True, exist_ok=True)
    with open(attempts, "a") as handle:
        handle.write("resumed\n" if checkpoint is not None else "fresh\n")
    config = Config(model=model, dataset=dataset, config_file_list=config_files or None,
                    config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    data = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, data)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    net = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)

    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            saved = torch.load(Path(folder) / CHECKPOINT_FILE, map_location=config["device"],
                               weights_only=True)
        net.load_state_dict(saved["model"])
        trainer.optimizer.load_state_dict(saved["optimizer"])
        trainer.start_epoch = int(saved["epoch"]) + 1
        trainer.best_valid_score = saved["best_valid_score"]
        trainer.cur_step = int(saved["cur_step"])
        trainer.best_valid_result = saved["best_valid_result"]

    last_result: dict[str, float] = {}
    original_valid = trainer._valid_epoch

    def valid_epoch(*args, **kwargs):
        score, result = original_valid(*args, **kwargs)
        last_result.clear()
        last_result.update({k: float(_plain(v)) for k, v in result.items()})
        return score, result

    trainer._valid_epoch = valid_epoch

    def report(epoch_idx: int, valid_score: float) -> None:
        metrics = {**last_result, "valid_score": float(_plain(valid_score)), "epoch": epoch_idx + 1}
        with tempfile.TemporaryDirectory() as folder:
            torch.save({
                "model": net.state_dict(),
                "optimizer": trainer.optimizer.state_dict(),
                "epoch": epoch_idx,
                "best_valid_score": float(_plain(trainer.best_valid_score)),
                "cur_step": int(trainer.cur_step),
                "best_valid_result": {k: float(_plain(v)) for k, v in (trainer.best_valid_result or {}).items()},
            }, Path(folder) / CHECKPOINT_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    trainer.fit(train_data, valid_data, verbose=False, saved=save_model, show_progress=False,
                callback_fn=report)
