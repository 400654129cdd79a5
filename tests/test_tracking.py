"""MLflow helpers: the data-input record survives the race of two jobs registering one dataset."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from stages import tracking


def test_data_input_is_linked_after_losing_the_insert_race(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("race")
    real = mlflow.log_input
    client = mlflow.MlflowClient()
    other = client.create_run(mlflow.get_experiment_by_name("race").experiment_id)
    calls = []

    def lose_once(dataset, context=None):  # another job inserts the dataset row first; our insert fails
        calls.append(1)
        if len(calls) == 1:
            client.log_inputs(other.info.run_id, [mlflow.entities.DatasetInput(dataset._to_mlflow_entity())])
            raise mlflow.exceptions.MlflowException(
                "(sqlite3.IntegrityError) UNIQUE constraint failed: datasets"
            )
        return real(dataset, context=context)

    with mlflow.start_run() as run:
        monkeypatch.setattr(mlflow, "log_input", lose_once)
        tracking.log_data_input(tmp_path, "store", "ab" * 32, "training")
        monkeypatch.undo()
    inputs = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
    assert len(calls) == 2 and [d.dataset.name for d in inputs] == ["store"]
    with mlflow.start_run(), pytest.raises(mlflow.exceptions.MlflowException, match="other"):
        monkeypatch.setattr(
            mlflow,
            "log_input",
            lambda *a, **k: (_ for _ in ()).throw(mlflow.exceptions.MlflowException("some other failure")),
        )
        tracking.log_data_input(tmp_path, "store", "ab" * 32, "training")  # other errors propagate
    mlflow.set_tracking_uri(None)
