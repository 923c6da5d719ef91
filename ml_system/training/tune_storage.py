"""Where Ray Tune keeps a search's trials and checkpoints: ``ray.storage_uri``.

Tune writes each trial's checkpoints from the node the trial ran on and the driver reads the
winner's back, so on more than one node the location must be one every node reaches. A local path
(the default, ``<home>/ray_results``) serves one machine or a shared mount; ``s3://`` goes through a
``pyarrow`` S3 filesystem built from the same ``AWS_*`` keys the offline store takes, because Tune's
own URI handling cannot be given an endpoint (MinIO, a test server) or credentials per cluster.
"""

from __future__ import annotations

from pyarrow import fs

from ml_system.config import RayConfig, scheme_of


def tune_storage(config: RayConfig) -> tuple[str, fs.FileSystem | None]:
    """``(storage_path, storage_filesystem)`` for ``tune.RunConfig``."""
    uri = config.storage_uri
    if scheme_of(uri) not in ("s3", "s3a"):
        return uri.removeprefix("file://"), None
    opts = config.storage_options
    endpoint = opts.get("AWS_ENDPOINT_URL") or None
    plain_http = opts.get("AWS_ALLOW_HTTP", "").lower() in ("true", "1", "yes") or (endpoint or "").startswith("http:")
    filesystem = fs.S3FileSystem(
        access_key=opts.get("AWS_ACCESS_KEY_ID") or None,
        secret_key=opts.get("AWS_SECRET_ACCESS_KEY") or None,
        session_token=opts.get("AWS_SESSION_TOKEN") or None,
        region=opts.get("AWS_REGION") or None,
        endpoint_override=endpoint.split("://", 1)[-1] if endpoint else None,
        scheme="http" if plain_http else "https",
    )
    # with a filesystem given, Tune takes the path without its scheme
    return uri.split("://", 1)[1].rstrip("/"), filesystem
