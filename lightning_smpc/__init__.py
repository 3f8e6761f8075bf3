"""lightning_smpc: private inference for PyTorch Lightning with secure multi-party computation.

``import lightning_smpc`` registers the ``"secure_predict"`` strategy (and ``"secure_predict_3pc"``).
"""
from .metrics import SecureAccuracy, secure_accuracy
from .model_shares import ModelSharesError, load_model_shares, save_model_shares
from .mpc import Session, ShareTensor
from .preflight import PreflightError, PreflightReport, preflight
from .strategy import SecurePredictStrategy, StrategyUsageError
from .validate import UnsupportedModuleError

__all__ = [
    "ModelSharesError", "PreflightError", "PreflightReport", "SecureAccuracy", "SecurePredictStrategy", "Session", "ShareTensor",
    "StrategyUsageError", "UnsupportedModuleError", "load_model_shares", "preflight", "save_model_shares",
    "secure_accuracy",
]
__version__ = "0.1.0"
