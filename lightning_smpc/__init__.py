"""lightning_smpc: private inference for PyTorch Lightning with secure multi-party computation.

``import lightning_smpc`` registers the ``"secure_predict"`` strategy (and ``"secure_predict_3pc"``).
"""
from .metrics import SecureAccuracy, secure_accuracy
from .mpc import Session, ShareTensor
from .preflight import PreflightError, PreflightReport, preflight
from .strategy import SecurePredictStrategy, StrategyUsageError
from .validate import UnsupportedModuleError

__all__ = [
    "PreflightError", "PreflightReport", "SecureAccuracy", "SecurePredictStrategy", "Session", "ShareTensor",
    "StrategyUsageError", "UnsupportedModuleError", "preflight", "secure_accuracy",
]
__version__ = "0.1.0"
