"""Generic serving for every use case: app builder, ingress, scorer, caches, HTTP edges, metrics, tracing.

Imported by module (``ml_system.serving.tracing``...) so that a process that
only scores pays for none of Serve's deploy machinery; the main names are here.
The app builder is ``ml_system.serving.app:build_app``.
"""

from ml_system.serving.cache import TTLCache
from ml_system.serving.deploy import deploy_config, fast_serving_env, run_app
from ml_system.serving.feature_cache import CachingOnlineStore, data_version
from ml_system.serving.model_deployment import RegisteredBooster, XGBoostModel, select_device
from ml_system.serving.settings import ScorerSettings

__all__ = [
    "CachingOnlineStore",
    "RegisteredBooster",
    "ScorerSettings",
    "TTLCache",
    "XGBoostModel",
    "data_version",
    "deploy_config",
    "fast_serving_env",
    "run_app",
    "select_device",
]
