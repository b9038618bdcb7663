"""lib/webhooks/targets.py and lib/webhooks/outbound.py: the rules for outbound webhook requests, each refusal for
its stated reason, and the connection itself (pinned to the checked address, no redirects, bounded reads and time)."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lib.webhooks import outbound, targets

HOSTILE = [
    pytest.param("http://hooks.example.com/x", "must use https", id="plain-http"),
    pytest.param("ftp://hooks.example.com/x", "must use https", id="ftp"),
    pytest.param("file:///etc/passwd", "must use https", id="file"),
    pytest.param("gopher://127.0.0.1:6379/_FLUSHALL", "must use https", id="gopher"),
    pytest.param("https:///path-only", "no host", id="no-host"),
    pytest.param("https://user:pass@hooks.example.com/", "credentials", id="credentials"),
    pytest.param("https://hooks.example.com/#frag", "fragment", id="fragment"),
    pytest.param("https://hooks.example.com/a b", "whitespace", id="space"),
    pytest.param("https://hooks.example.com/\r\nX-Injected: 1", "whitespace or control", id="crlf"),
    pytest.param("https://hooks.example.com:99999/", "malformed", id="bad-port"),
    pytest.param("https://" + "a" * 2050 + ".com/", "longer than", id="too-long"),
    pytest.param("https://localhost/", "internal name", id="localhost"),
    pytest.param("https://metadata.google.internal/computeMetadata/v1/", "internal name", id="metadata-name"),
    pytest.param("https://metadata/computeMetadata/v1/", "internal name", id="metadata-short"),
    pytest.param("https://printer.local/", "internal name", id="mdns"),
    pytest.param("https://\u24dcetadata.google.\u24d8nternal/", "internal name", id="metadata-circled-letters"),
    pytest.param("https://metadata.google\uff0einternal/", "internal name", id="metadata-full-width-dot"),
    pytest.param("https://\u24dbocalhost/", "internal name", id="localhost-circled"),
    pytest.param("https://a\u200d\u0000b.example/", "whitespace or control", id="nul-in-idn"),
    pytest.param("https://\u0300a.example/", "internationalised", id="idn-invalid"),
    pytest.param("https://xn--a-ecp.example/", "internationalised", id="punycode-invalid"),
    pytest.param("https://intranet/", "single-label", id="single-label"),
    pytest.param("https://127.0.0.1/", "loopback", id="loopback"),
    pytest.param("https://127.1/", "loopback", id="loopback-short"),
    pytest.param("https://2130706433/", "loopback", id="loopback-decimal"),
    pytest.param("https://0x7f.0.0.1/", "loopback", id="loopback-hex"),
    pytest.param("https://10.0.0.1/", "private", id="private-10"),
    pytest.param("https://172.16.5.4/", "private", id="private-172"),
    pytest.param("https://192.168.1.1/", "private", id="private-192"),
    pytest.param("https://169.254.169.254/computeMetadata/v1/", "link-local", id="metadata-ip"),
    pytest.param("https://100.64.0.1/", "shared address space", id="shared-cgnat"),
    pytest.param("https://224.0.0.1/", "multicast", id="multicast"),
    pytest.param("https://240.0.0.1/", "reserved", id="reserved"),
    pytest.param("https://255.255.255.255/", "reserved", id="broadcast"),
    pytest.param("https://0.0.0.0/", "unspecified", id="unspecified"),
    pytest.param("https://[::1]/", "loopback", id="ipv6-loopback"),
    pytest.param("https://[::]/", "unspecified", id="ipv6-unspecified"),
    pytest.param("https://[fe80::1]/", "link-local", id="ipv6-link-local"),
    pytest.param("https://[fd00:ec2::254]/", "private", id="ipv6-unique-local"),
    pytest.param("https://[fec0::1]/", "site-local", id="ipv6-site-local"),
    pytest.param("https://[ff02::1]/", "multicast", id="ipv6-multicast"),
    pytest.param("https://[::ffff:127.0.0.1]/", "loopback", id="ipv4-mapped-loopback"),
    pytest.param("https://[::ffff:169.254.169.254]/", "link-local", id="ipv4-mapped-metadata"),
    pytest.param("https://[::ffff:10.0.0.1]/", "private", id="ipv4-mapped-private"),
    pytest.param("https://[::127.0.0.1]/", "loopback", id="ipv4-compatible"),
    pytest.param("https://[2002:a9fe:a9fe::]/", "link-local", id="6to4-metadata"),
    pytest.param("https://[64:ff9b::a00:1]/", "private", id="nat64-private"),
]


@pytest.mark.parametrize(("url", "reason"), HOSTILE)
def test_hostile_urls_are_refused_for_their_reason(url, reason):
    with pytest.raises(targets.TargetRefused, match=reason):
        targets.resolve(url, allow_private=False)


@pytest.mark.parametrize(
    ("answers", "reason"),
    [
        pytest.param(["93.184.215.14", "10.1.2.3"], "10.1.2.3: private", id="one-of-two-private"),
        pytest.param(["2606:2800:21f:cb07:6820:80da:af6b:8b2c", "::1"], "::1: loopback", id="v6-loopback-among"),
        pytest.param(["169.254.169.254"], "link-local", id="name-to-metadata"),
        pytest.param([], "no address", id="nothing"),
    ],
)
def test_a_name_is_refused_if_any_address_it_resolves_to_is_not_public(answers, reason):
    with pytest.raises(targets.TargetRefused, match=reason):
        targets.resolve("https://hooks.example.com/in", allow_private=False, resolver=lambda host, port: answers)


def test_a_name_that_does_not_resolve_is_refused():
    def fail(host, port):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(targets.TargetRefused, match="does not resolve"):
        targets.resolve("https://hooks.example.com/in", allow_private=False, resolver=fail)


def test_public_addresses_pass_with_their_path_and_query():
    target = targets.resolve(
        "https://hooks.example.com:8443/in?token=abc",
        allow_private=False,
        resolver=lambda host, port: ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"],
    )
    assert (target.scheme, target.host, target.port, target.path) == (
        "https",
        "hooks.example.com",
        8443,
        "/in?token=abc",
    )
    assert target.addresses == ("93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c")


def test_an_internationalised_name_is_looked_up_and_connected_to_in_its_ascii_form():
    asked = []
    target = targets.resolve(
        "https://B\u00fccher.example/in",
        allow_private=False,
        resolver=lambda host, port: asked.append(host) or ["93.184.215.14"],
    )
    assert asked == ["xn--bcher-kva.example"]
    assert target.host == "xn--bcher-kva.example"


def test_private_targets_and_http_pass_only_when_allowed():
    assert targets.resolve("http://127.0.0.1:9/x", allow_private=True).addresses == ("127.0.0.1",)
    with pytest.raises(targets.TargetRefused):
        targets.resolve("http://127.0.0.1:9/x", allow_private=False)


class Server:
    """A tiny HTTP server on `host` whose handler the test supplies (POST and GET); records Host headers."""

    def __init__(self, handle, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None):
        hosts = self.hosts = []
        peers = self.peers = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                hosts.append(self.headers.get("Host"))
                peers.append(self.client_address)
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                handle(self)

            do_GET = do_POST  # http.server dispatches on do_<METHOD>

            def log_message(self, *_):
                pass

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def answer(status: int, body: bytes = b"", headers: dict | None = None):
    def handle(h):
        h.send_response(status)
        for name, value in (headers or {}).items():
            h.send_header(name, value)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    return handle


def test_the_connection_goes_to_the_checked_address_however_dns_answers_next():
    """DNS rebinding: the first answer is checked and used; no second lookup happens."""
    checked, elsewhere = Server(answer(204), "127.0.0.2"), Server(answer(204), "127.0.0.1")
    lookups = []

    def rebinding(host, port):
        lookups.append(host)
        return ["127.0.0.2"] if len(lookups) == 1 else ["127.0.0.1"]

    try:
        target = targets.resolve(f"http://hooks.example.test:{checked.port}/in", True, resolver=rebinding)
        result = outbound.post(target, b"{}", {"content-type": "application/json"})
    finally:
        checked.stop()
        elsewhere.stop()
    assert result.ok
    assert result.status == 204
    assert lookups == ["hooks.example.test"]
    assert checked.hosts == [f"hooks.example.test:{checked.port}"]
    assert elsewhere.hosts == []


def test_redirects_are_not_followed():
    other = Server(answer(200))
    redirecting = Server(answer(307, headers={"Location": f"http://127.0.0.1:{other.port}/stolen"}))
    try:
        result = outbound.post(targets.resolve(f"http://127.0.0.1:{redirecting.port}/", True), b"{}", {})
    finally:
        other.stop()
        redirecting.stop()
    assert result.status == 307
    assert not result.ok
    assert other.hosts == []


def test_once_the_status_is_in_a_body_that_dribbles_holds_the_delivery_no_longer():
    """The status is the answer: a receiver that then sends a big body a byte at a time holds
    the delivery only until the status (the body is not read; the connection is dropped)."""
    stop = threading.Event()

    def status_then_dribble(h):
        h.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
        h.wfile.flush()
        while not stop.wait(0.2):
            try:
                h.wfile.write(b"x")
                h.wfile.flush()
            except OSError:
                return

    slow = Server(status_then_dribble)
    done: list = []
    try:
        target = targets.resolve(f"http://127.0.0.1:{slow.port}/", True)
        worker = threading.Thread(target=lambda: done.append(outbound.post(target, b"{}", {}, timeout=60)))
        worker.start()
        # Reading the body would last until the 60 s deadline: the post returns long before.
        worker.join(45)
        assert done
        assert done[0].ok
        assert done[0].status == 200
    finally:
        stop.set()
        slow.stop()


def test_a_small_body_that_stalls_is_given_up_after_its_grace_and_the_connection_dropped():
    stop = threading.Event()

    def stall(h):
        h.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        h.wfile.flush()
        stop.wait(30)

    stalled = Server(stall)
    done: list = []
    try:
        target = targets.resolve(f"http://127.0.0.1:{stalled.port}/", True)
        worker = threading.Thread(target=lambda: done.append(outbound.post(target, b"{}", {}, timeout=60)))
        worker.start()
        worker.join(45)  # its grace (1 s) ends it, not the 60 s deadline
        assert done
        assert done[0].ok
        assert outbound.kept(target, "127.0.0.1") == 0  # not kept
    finally:
        stop.set()
        stalled.stop()


def test_a_receiver_that_dribbles_its_answer_is_cut_off_at_the_deadline():
    stop = threading.Event()

    def dribble(h):
        h.wfile.write(b"HTTP/1.1 200 OK\r\n")
        h.wfile.flush()
        while not stop.wait(0.2):  # one header byte per 0.2 s, forever: each read is quick, the whole is not
            try:
                h.wfile.write(b"X")
                h.wfile.flush()
            except OSError:
                return

    slow = Server(dribble)
    try:
        started = time.monotonic()
        result = outbound.post(targets.resolve(f"http://127.0.0.1:{slow.port}/", True), b"{}", {}, timeout=1.5)
        took = time.monotonic() - started
    finally:
        stop.set()
        slow.stop()
    assert result.error == "timeout"
    assert result.status is None
    assert took < 3


def test_a_closed_port_is_a_connection_error_not_an_exception():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = outbound.post(targets.resolve(f"http://127.0.0.1:{port}/", True), b"{}", {})
    assert result.error == "connection_refused"
    assert result.status is None
    assert not result.ok


def test_tls_is_checked_against_the_urls_host():
    """An https endpoint whose certificate does not name the host is a failure, never a delivery."""
    plain = Server(answer(200))  # not TLS at all: the handshake fails
    try:
        result = outbound.post(targets.resolve(f"https://127.0.0.1:{plain.port}/", True), b"{}", {}, timeout=3)
    finally:
        plain.stop()
    assert not result.ok
    assert result.error in ("tls_error", "connection_closed", "connection_reset")


def test_a_kept_alive_connection_is_reused_for_the_same_checked_address():
    server = Server(answer(200, b"ok"))
    try:
        target = targets.resolve(f"http://127.0.0.1:{server.port}/", True)
        results = [outbound.post(target, b"{}", {}) for _ in range(3)]
    finally:
        server.stop()
    assert all(result.ok for result in results)
    assert len(set(server.peers)) == 1  # one TCP connection for the three


def test_a_pooled_connection_the_receiver_closed_is_replaced_once():
    closing = {"n": 0}

    def answer_then_close(h):
        closing["n"] += 1
        answer(200)(h)
        h.close_connection = True  # closes after answering, without saying so

    server = Server(answer_then_close)
    try:
        target = targets.resolve(f"http://127.0.0.1:{server.port}/", True)
        first = outbound.post(target, b"{}", {})
        second = outbound.post(target, b"{}", {})  # the pooled connection is dead: a new one is used
    finally:
        server.stop()
    assert first.ok
    assert second.ok
    assert closing["n"] == 2
    assert len(set(server.peers)) == 2


def test_a_connection_is_never_reused_for_another_address():
    """The pool is keyed by the checked address: when the name resolves elsewhere, a new connection goes there."""
    a = Server(answer(200), "127.0.0.1")
    try:
        first = outbound.post(
            targets.resolve(f"http://hooks.example.test:{a.port}/", True, resolver=lambda h, p: ["127.0.0.1"]),
            b"{}",
            {},
        )
        # Same name and port, now resolving to 127.0.0.2, where nothing listens on that port.
        second = outbound.post(
            targets.resolve(f"http://hooks.example.test:{a.port}/", True, resolver=lambda h, p: ["127.0.0.2"]),
            b"{}",
            {},
        )
    finally:
        a.stop()
    assert first.ok
    assert second.error == "connection_refused"
    assert len(a.peers) == 1


# --- lookups: bounded, one per host, failures remembered, no shared queue ----------------------


def until(condition, what: str, timeout: float = 10.0) -> None:
    """Poll `condition` (a readiness check between threads, not a stand-in for one)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} never came"
        time.sleep(0.005)


def test_a_lookup_is_bounded_by_its_lifetime_and_nothing_keeps_running():
    """A nameserver that never answers (a black hole): dnspython gives up at the lifetime."""
    import dns.exception
    import dns.resolver

    black_hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    black_hole.bind(("127.0.0.1", 0))
    try:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = black_hole.getsockname()[1]
        before = threading.active_count()
        with pytest.raises(dns.exception.Timeout):
            targets.dns_lookup("hooks.example.com", 443, 0.3, resolver)
        assert threading.active_count() == before  # it ran in this thread: no lookup left behind
        lookups = targets.Lookups(lambda host, port, lifetime: targets.dns_lookup(host, port, lifetime, resolver))
        with pytest.raises(targets.TargetRefused, match=r"did not resolve within 0\.3 s"):
            lookups.addresses("hooks.example.com", 443, 0.3)
    finally:
        black_hole.close()


def test_one_lookup_per_host_in_flight_the_others_wait_for_its_answer():
    release, calls = threading.Event(), []

    def slow(host, port, lifetime):
        calls.append(host)
        release.wait(30)
        return ["93.184.215.14"]

    lookups = targets.Lookups(slow)
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(lookups.addresses, "hooks.example.com", 443, 30) for _ in range(8)]
        until(lambda: calls, "the first lookup")
        release.set()
        assert [f.result() for f in futures] == [["93.184.215.14"]] * 8
    assert calls == ["hooks.example.com"]


def test_a_waiting_lookup_gives_up_at_its_own_deadline():
    release = threading.Event()
    lookups = targets.Lookups(lambda host, port, lifetime: release.wait(30) and ["93.184.215.14"])
    with ThreadPoolExecutor(1) as pool:
        leader = pool.submit(lookups.addresses, "slow.example.com", 443, 30)
        until(lambda: lookups._flights, "the leader's lookup")
        with pytest.raises(targets.TargetRefused, match=r"did not resolve within 0\.2 s"):
            lookups.addresses("slow.example.com", 443, 0.2)
        release.set()
        assert leader.result() == ["93.184.215.14"]


def test_slow_names_of_one_tenant_hold_no_other_hosts_lookup():
    """Sixteen lookups stuck on a black-holed name (one tenant's) and a healthy host still
    resolves at once: each lookup runs in its caller's thread, with no shared queue to fill."""
    import dns.exception

    release = threading.Event()

    def lookup(host, port, lifetime):
        if host.endswith(".black-hole.example"):
            release.wait(30)
            raise dns.exception.Timeout()
        return ["93.184.215.14"]

    lookups = targets.Lookups(lookup)
    with ThreadPoolExecutor(16) as pool:
        stuck = [pool.submit(lookups.addresses, f"h{n}.black-hole.example", 443, 30) for n in range(16)]
        until(lambda: len(lookups._flights) == 16, "sixteen lookups in flight")
        assert lookups.addresses("healthy.example.com", 443, 30) == ["93.184.215.14"]
        assert not any(f.done() for f in stuck)
        release.set()
        for future in stuck:
            with pytest.raises(targets.TargetRefused):
                future.result()


def test_a_failed_lookup_is_remembered_briefly():
    now, calls = [0.0], []

    def fail(host, port, lifetime):
        calls.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    lookups = targets.Lookups(fail, remember_failures=5.0, clock=lambda: now[0])
    for _ in range(3):
        with pytest.raises(targets.TargetRefused, match="does not resolve"):
            lookups.addresses("gone.example.com", 443, 3)
    assert calls == ["gone.example.com"]
    now[0] = 5.1
    with pytest.raises(targets.TargetRefused):
        lookups.addresses("gone.example.com", 443, 3)
    assert len(calls) == 2


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory):
    """A CA the client trusts, and a server certificate it signed for hooks.example.test only."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    now = datetime.now(UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("test ca"))
        .issuer_name(name("test ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(name("hooks.example.test"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("hooks.example.test")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    client = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return server, client


def test_tls_goes_to_the_checked_address_with_the_urls_host_for_its_certificate_and_host(tls_pair):
    """Issue 34 (urllib3's pools): connected to the checked address, the TLS handshake names and checks the
    URL's host (a certificate for it passes, the same address under another name does not), and `Host` is it."""
    server_tls, client_tls = tls_pair
    names = []

    def sni(sock, server_name, _context):
        names.append(server_name)

    server_tls.sni_callback = sni
    secure = Server(answer(204), tls=server_tls)
    try:
        for_it = targets.resolve(
            f"https://hooks.example.test:{secure.port}/in", True, resolver=lambda h, p: ["127.0.0.1"]
        )
        other = targets.resolve(
            f"https://other.example.test:{secure.port}/in", True, resolver=lambda h, p: ["127.0.0.1"]
        )
        results = [outbound.post(for_it, b"{}", {}, tls_context=client_tls) for _ in range(2)]
        refused = outbound.post(other, b"{}", {}, tls_context=client_tls)
    finally:
        secure.stop()
    assert [result.status for result in results] == [204, 204]
    assert secure.hosts == [f"hooks.example.test:{secure.port}"] * 2
    assert len(set(secure.peers)) == 1  # the second delivery reused the first's connection
    assert refused.error == "tls_certificate_error"
    assert refused.status is None
    assert names == ["hooks.example.test", "other.example.test"]


def test_the_headers_go_out_with_or_without_a_body():
    """outbound holds urllib3's header block to send it with the body's first bytes; a request with no body,
    or a body of many packets, still arrives whole."""
    lengths = []

    def count(h):
        lengths.append(h.headers.get("Content-Length"))
        answer(204)(h)

    server = Server(count)
    try:
        target = targets.resolve(f"http://127.0.0.1:{server.port}/", True)
        results = [outbound.post(target, body, {}, timeout=5) for body in (b"", b"{}", b"x" * 200_000)]
    finally:
        server.stop()
    assert [result.status for result in results] == [204, 204, 204]
    assert lengths == ["0", "2", "200000"]


def test_a_receivers_malformed_headers_log_nothing_of_the_url(caplog):
    """A header block with a stray line (urllib3's own response layer warns "Failed to parse headers
    (url=...)" with the whole URL, whose query may carry the customer's token; lib/platform/logs.py keeps
    only the origin of such records): the delivery stands and no log record holds the URL's path or query."""
    listener = socket.create_server(("127.0.0.1", 0))

    def receive():
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nnot a header line\r\n\r\n")

    threading.Thread(target=receive, daemon=True).start()
    port = listener.getsockname()[1]
    try:
        with caplog.at_level("DEBUG", logger="urllib3"):
            result = outbound.post(targets.resolve(f"http://127.0.0.1:{port}/in/tok?token=s3cret", True), b"{}", {})
    finally:
        listener.close()
    assert result.status == 204
    assert "s3cret" not in caplog.text
    assert "/in/tok" not in caplog.text


def test_a_pool_the_manager_dropped_meanwhile_is_replaced(monkeypatch):
    """Past MAX_ADDRESSES the manager closes its least recently used pool; one closed between its lookup and
    its use is taken again, not raised."""
    server = Server(answer(204))
    try:
        target = targets.resolve(f"http://127.0.0.1:{server.port}/", True)
        stale = outbound._pool(target, "127.0.0.1", None)
        outbound._pools.clear()  # dropped from the manager, then closed: what an eviction does
        stale.close()
        lookup, handed = outbound._pool, []

        def stale_first(*args):
            handed.append(args)
            return stale if len(handed) == 1 else lookup(*args)

        monkeypatch.setattr(outbound, "_pool", stale_first)
        result = outbound.post(target, b"{}", {}, timeout=5)
    finally:
        server.stop()
    assert result.status == 204
    assert len(handed) == 2
