"""Serving building blocks: batched model, caches, HTTP edges, metrics, tracing, deploy helpers.

Imported by module (``ml_system.serving.tracing``...) so that a process that
only scores pays for none of Serve's deploy machinery; the main names are here.
"""

from ml_system.serving.cache import TTLCache
from ml_system.serving.deploy import deploy_config, fast_serving_env, run_app
from ml_system.serving.feature_cache import CachingOnlineStore, data_version
from ml_system.serving.model_deployment import BatchingConfig, RegisteredBooster, XGBoostModel, select_device

__all__ = [
    "BatchingConfig",
    "CachingOnlineStore",
    "RegisteredBooster",
    "TTLCache",
    "XGBoostModel",
    "data_version",
    "deploy_config",
    "fast_serving_env",
    "run_app",
    "select_device",
]
