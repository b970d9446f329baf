"""``backend = "upstream"``: a model answered by a pool of OpenAI-compatible servers."""

from oasis.backends.upstream.backend import UpstreamBackend, UpstreamKind
from oasis.backends.upstream.pool import Pool, Replica

__all__ = ["Pool", "Replica", "UpstreamBackend", "UpstreamKind"]
