"""Published weights by name or URL: the registry (`dmpose.weights.registry`) and the cache that fetches,
verifies and converts them (`dmpose.weights.hub`)."""

from dmpose.weights.hub import (
    MIRROR_ENV,
    WeightsError,
    cached_file,
    fetch,
    fetch_url,
    import_file,
    is_published,
    is_url,
    resolve_checkpoint,
    resolve_pretrained,
    weights_dir,
)
from dmpose.weights.registry import (
    DEFAULT_DETECTOR,
    DEFAULT_POSE_MODEL,
    REGISTRY,
    WeightsEntry,
    entry_for_file,
    get_entry,
    imagenet_entry,
    sha256_prefix,
)

__all__ = [
    "DEFAULT_DETECTOR",
    "DEFAULT_POSE_MODEL",
    "MIRROR_ENV",
    "REGISTRY",
    "WeightsEntry",
    "WeightsError",
    "cached_file",
    "entry_for_file",
    "fetch",
    "fetch_url",
    "get_entry",
    "imagenet_entry",
    "import_file",
    "is_published",
    "is_url",
    "resolve_checkpoint",
    "resolve_pretrained",
    "sha256_prefix",
    "weights_dir",
]
