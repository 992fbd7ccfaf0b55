"""Teacher signal cache: the teacher's top-k distribution on a training set, computed once, reused by every run.

- :mod:`kdlab.teacher_cache.format`: what is stored per kept token (top-k ids, quantised log-prob gaps, tail sums);
- :mod:`kdlab.teacher_cache.store`: :func:`build_cache`, :func:`read_manifest`, :func:`load_cache`,
  :class:`TeacherCache` and its decoded :class:`CacheRows`;
- :mod:`kdlab.teacher_cache.loss`: the cached teacher as a teacher signal (:class:`CachedTeacher`) of the one
  objective :func:`kdlab.losses.token_objective`, its source :func:`kdlab.teacher_cache.loss.cached_teacher_at` for the
  chunked objective, and :func:`chunked_cached_distill_loss`;
- :mod:`kdlab.teacher_cache.integrity`: per-array checksums recorded at build time and checked on every load.

The package knows nothing of runs: the cache of a distill run (``--teacher-cache``: checked, built on first use,
loaded) is :mod:`kdlab.train.cache_lifecycle` and :mod:`kdlab.train.teacher_signal`.
"""

from kdlab.teacher_cache.format import (
    CACHE_FILE,
    DEFAULT_TEMPERATURES,
    FORMAT_VERSION,
    MANIFEST_FILE,
    TAIL_MODES,
    bytes_per_token,
    id_bytes,
    normalize_temperatures,
    temperature_index,
)
from kdlab.teacher_cache.loss import (
    CachedTeacher,
    TailApproximationWarning,
    cached_divergence,
    chunked_cached_distill_loss,
)
from kdlab.teacher_cache.store import (
    CacheInfo,
    CacheRows,
    TeacherCache,
    build_cache,
    check_format,
    data_hash,
    load_cache,
    read_manifest,
    teacher_fingerprint,
)

__all__ = [
    "CACHE_FILE",
    "DEFAULT_TEMPERATURES",
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "TAIL_MODES",
    "CacheInfo",
    "CacheRows",
    "CachedTeacher",
    "TailApproximationWarning",
    "TeacherCache",
    "build_cache",
    "bytes_per_token",
    "cached_divergence",
    "check_format",
    "chunked_cached_distill_loss",
    "data_hash",
    "id_bytes",
    "load_cache",
    "normalize_temperatures",
    "read_manifest",
    "teacher_fingerprint",
    "temperature_index",
]
