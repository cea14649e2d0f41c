"""gence: Generative Cross-Entropy (GenCE), a drop-in replacement for cross-entropy.

    from gence import GenCELoss
    criterion = GenCELoss()          # instead of nn.CrossEntropyLoss()
    loss = criterion(logits, target)

Subpackages, one per concern: ``losses`` (GenCE and baselines), ``metrics`` (calibration and OOD),
``calibration`` (temperature scaling, reliability diagrams), ``data`` (datasets, regimes, augmentation),
``models``, ``train`` (the training loop), ``experiments`` (grids, runner, results database),
``report`` (tables and plots from stored runs), ``properness`` (the known-posterior study).
"""
from gence.losses.gence import GenCELoss, gen_cross_entropy

__version__ = "0.1.0"

__all__ = ["GenCELoss", "gen_cross_entropy", "__version__"]
