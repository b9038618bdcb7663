"""The backends' clients (Firestore, Storage, Pub/Sub), one per instance, and each call's time and retry budget.

Clients are created lazily on first use (so tests and `make run` can point the
environment at the emulators first) and shared by all request threads: both
libraries' clients are thread-safe.

Every upstream call takes an explicit per-attempt timeout and a retry policy
with a total deadline, so a missing or stalled backend costs a request at most
about `deadline + one attempt` (about 7 s for Firestore, 11 s for Storage)
before it answers 503; never the function's own timeout.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

import cachetools
import requests
from google.api_core import exceptions as gexc
from google.api_core import retry as gretry
from google.auth import exceptions as auth_exc
from google.cloud import firestore, storage
from google.cloud.storage.retry import DEFAULT_RETRY as STORAGE_DEFAULT_RETRY

from lib.platform.config import FirestoreSettings
from lib.platform.errors import ServiceUnavailable
from lib.platform.logs import keep_urls_out_of_urllib3

T = TypeVar("T")

keep_urls_out_of_urllib3()  # Storage's calls go through requests; an upload session's URL is a secret

# Firestore (gRPC): seconds per attempt, and the retry budget across attempts.
FIRESTORE_ATTEMPT_TIMEOUT = 2.5
FIRESTORE_RETRY = gretry.Retry(
    initial=0.05,
    maximum=1.0,
    multiplier=2.0,
    timeout=4.0,
    predicate=gretry.if_exception_type(
        gexc.ServiceUnavailable, gexc.InternalServerError, gexc.DeadlineExceeded, gexc.TooManyRequests
    ),
)
# Cleanup after a failure is best effort (a lease expires anyway): one short try.
FIRESTORE_CLEANUP_TIMEOUT = 1.5

# Storage (HTTP): (connect, read) seconds per attempt; storage's own transient
# predicate (429, 5xx, connection errors) with a total budget. Initiating a
# session with if_generation_match=0 is conditional, so retrying it is safe.
STORAGE_TIMEOUT = (2.0, 4.0)
STORAGE_RETRY = STORAGE_DEFAULT_RETRY.with_delay(initial=0.1, maximum=1.0, multiplier=2.0).with_timeout(5.0)
# A rewrite (placing a verified upload, lib/uploads/gcs_sessions.py `place`): "Any timeout logic that you set in
# conjunction with using this method should be at least 30 seconds"
# (https://cloud.google.com/storage/docs/json_api/v1/objects/rewrite). Within one location and
# storage class it answers at once; the bound is for the day it does not.
REWRITE_TIMEOUT = (2.0, 30.0)

# Library errors that mean "the backend is unavailable or slow right now".
_TRANSIENT = (
    gexc.ServiceUnavailable,
    gexc.DeadlineExceeded,
    gexc.InternalServerError,
    gexc.BadGateway,
    gexc.GatewayTimeout,
    gexc.TooManyRequests,
    gexc.Aborted,
    gexc.RetryError,
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    auth_exc.TransportError,
    ConnectionError,
    TimeoutError,
)


@contextlib.contextmanager
def upstream() -> Iterator[None]:
    """Turn a backend's transient failure into our 503, keeping the cause.

    Anything else (a 403 from a misconfigured bucket, a bug) propagates and
    becomes a 500 with its traceback in the log.
    """
    try:
        yield
    except _TRANSIENT as exc:
        raise ServiceUnavailable() from exc


_lock = threading.Lock()
_clients: dict[tuple[Any, ...], Any] = {}


def shared(key: tuple[Any, ...], make: Callable[[], T]) -> T:
    """The instance's one object for `key` (a client, a cache), made on first use by one thread only."""
    client = _clients.get(key)
    if client is None:
        with _lock:
            client = _clients.get(key)
            if client is None:
                client = _clients[key] = make()
    return client


V = TypeVar("V")


class TtlLru(Generic[V]):
    """A bounded map whose entries expire, least recently used first out when full: cachetools'
    TTLCache, which does both, behind one lock (it is not thread-safe itself); a ttl of 0 caches
    nothing. `clock` is its timer, so tests move time instead of waiting."""

    def __init__(self, ttl: float, max_entries: int, clock: Callable[[], float] = time.monotonic):
        self.ttl, self.max_entries = ttl, max_entries
        self._entries: cachetools.TTLCache[str, V] = cachetools.TTLCache(max_entries, max(ttl, 0.0), timer=clock)
        self._lock = threading.Lock()

    def get(self, name: str) -> V | None:
        with self._lock:
            return self._entries.get(name)

    def put(self, name: str, value: V) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            self._entries[name] = value

    def pop(self, name: str) -> None:
        with self._lock:
            self._entries.pop(name, None)

    def __len__(self) -> int:
        with self._lock:
            self._entries.expire()
            return len(self._entries)


def firestore_client(settings: FirestoreSettings) -> firestore.Client:
    """The instance's Firestore client (honours FIRESTORE_EMULATOR_HOST)."""
    return shared(
        ("firestore", settings), lambda: firestore.Client(project=settings.project, database=settings.database)
    )


# Connections kept per host. The sweep's workers (main.SWEEP_WORKERS, 32) and
# the request threads share these sessions; past urllib3's default of 10, each
# call would open a new TLS connection, then discard it with a logged warning.
HTTP_POOL = 64


def wide_pools(http: requests.Session) -> requests.Session:
    """`http` keeping HTTP_POOL connections per host. Only over requests' own
    adapter (never, say, an mTLS one google-auth mounted)."""
    if type(http.get_adapter("https://")) is requests.adapters.HTTPAdapter:
        adapter = requests.adapters.HTTPAdapter(pool_maxsize=HTTP_POOL)
        http.mount("https://", adapter)
        http.mount("http://", adapter)
    return http


def storage_client(project: str) -> storage.Client:
    """The instance's Storage client (honours STORAGE_EMULATOR_HOST)."""

    def make() -> storage.Client:
        client = _without_proxy_lookup(storage.Client(project=project))
        wide_pools(client._http)
        return client

    return shared(("storage", project), make)


def session_http() -> requests.Session:
    """The instance's plain HTTP session for upload session URLs.

    No credentials: a session URL is its own credential, and sending our
    token along with it would only widen what a leaked request shows.
    """

    def make() -> requests.Session:
        http = requests.Session()
        http.trust_env = False
        return wide_pools(http)

    return shared(("session_http",), make)


def _without_proxy_lookup(client: storage.Client) -> storage.Client:
    # requests looks for proxy settings by scanning the whole environment on
    # every call (twice per initiation; make bench measured ~0.7 ms with 90
    # variables). A Cloud Function reaches GCS directly: no HTTP(S)_PROXY.
    client._http.trust_env = False
    return client


# Pub/Sub (gRPC): seconds per publish attempt, the retry budget, and how long a
# caller waits for the whole batch; the same shape of bound as Firestore's.
PUBSUB_ATTEMPT_TIMEOUT = 2.5
PUBSUB_RETRY = FIRESTORE_RETRY
PUBSUB_WAIT_SECONDS = 6.0


class Publisher:
    """Publishes to topics of one project and waits, bounded, until Pub/Sub has them all."""

    def __init__(self, project: str):
        import google.cloud.pubsub_v1 as pubsub_v1  # only instances that publish pay for the import

        # No batching delay: every message here is on a request's path.
        self._client = pubsub_v1.PublisherClient(
            batch_settings=pubsub_v1.types.BatchSettings(max_messages=100, max_latency=0.0)
        )
        self._project = project

    def publish(self, topic: str, messages: list[tuple[bytes, dict[str, str]]]) -> None:
        """Publish every (data, attributes) message.

        Raises:
            ServiceUnavailable: one was not accepted in time (some may have been:
                every consumer here takes a message more than once).
        """
        path = self._client.topic_path(self._project, topic)
        with upstream():
            futures = [
                self._client.publish(path, data, retry=PUBSUB_RETRY, timeout=PUBSUB_ATTEMPT_TIMEOUT, **attributes)
                for data, attributes in messages
            ]
            for future in futures:
                future.result(timeout=PUBSUB_WAIT_SECONDS)


def publisher(project: str) -> Publisher:
    """The instance's Pub/Sub publisher (honours PUBSUB_EMULATOR_HOST)."""
    return shared(("publisher", project), lambda: Publisher(project))
