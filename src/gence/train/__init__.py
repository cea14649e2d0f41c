"""The one training loop and ``gence train``.

    from gence.train import TrainConfig, fit
    result = fit(TrainConfig(dataset="digits", regime="balanced:50", model="small_cnn", loss="gence"))
    print(result.metrics["test/error"])
"""
from gence.train.loop import NonFiniteLossError, TrainConfig, TrainResult, fit, learning_rate

__all__ = ["TrainConfig", "TrainResult", "fit", "learning_rate", "NonFiniteLossError"]
