"""The one training loop and ``gence train``.

    from gence.train import TrainConfig, fit
    result = fit(TrainConfig(dataset="digits", regime="balanced:50", model="small_cnn", loss="gence"))
    print(result.metrics["test/error"])

``TrainConfig`` lives in :mod:`gence.contract` (the run contract) and is re-exported here.
"""
from gence.contract import TrainConfig
from gence.train.loop import NonFiniteLossError, TrainResult, fit, learning_rate

__all__ = ["TrainConfig", "TrainResult", "fit", "learning_rate", "NonFiniteLossError"]
