"""TLS: downstream with ALPN choosing h2 or http/1.1; upstream with SNI and CA verification."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest
import trustme

from greenmesh.testing.nginx import start_nginx
from tests.harness import free_port, mesh_config, wait_port


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A throwaway CA and a certificate for localhost, as files."""
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    cert.private_key_pem.write_to_path(str(d / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(d / "cert.pem"))
    with open(d / "cert.pem", "ab") as f:
        for pem in cert.cert_chain_pems[1:]:
            f.write(pem.bytes())
    trustme.CA().cert_pem.write_to_path(str(d / "other-ca.pem"))  # trusts nothing of ours
    return d


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-s", "--max-time", "20", *args], capture_output=True,
                          timeout=30)


def tls_listener(pki, protocol: str = "auto") -> dict:
    return {"protocol": protocol, "tls": {"certificate_chain": str(pki / "cert.pem"),
                                          "private_key": str(pki / "key.pem")}}


def test_downstream_tls_alpn_picks_the_protocol(upstream, start_mesh, pki):
    gm = start_mesh(mesh_config([upstream.address], listener=tls_listener(pki)))
    url = f"https://localhost:{gm.port()}"
    ca = ["--cacert", str(pki / "ca.pem")]
    r = curl(*ca, "-i", "--http2", url + "/")
    assert r.stdout.startswith(b"HTTP/2 200"), r.stdout + r.stderr
    r = curl(*ca, "-i", "--http1.1", url + "/")
    assert r.stdout.startswith(b"HTTP/1.1 200"), r.stdout + r.stderr
    meta = json.loads(curl(*ca, "--http2", url + "/echo").stdout.split(b"\n", 1)[0])
    assert meta["headers"]["x-forwarded-proto"] == "https"
    # Plain text to a TLS port is a failed handshake, closed, and the port keeps serving.
    with socket.create_connection(("127.0.0.1", gm.port()), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            got = s.recv(100)
        except ConnectionResetError:
            got = b""
        assert got == b"" or got[:1] == b"\x15", got  # closed, or a TLS alert record first
    assert curl(*ca, "--http2", url + "/").stdout == b"hello from up1\n"


def test_http1_only_tls_listener_offers_only_http1(upstream, start_mesh, pki):
    gm = start_mesh(mesh_config([upstream.address], listener=tls_listener(pki, "http1")))
    r = curl("--cacert", str(pki / "ca.pem"), "-i", "--http2",
             f"https://localhost:{gm.port()}/")
    assert r.stdout.startswith(b"HTTP/1.1 200"), r.stdout  # curl asked for h2, got http/1.1


@pytest.fixture
def tls_upstream(upstream, pki, tmp_path):
    """nginx serving h2 and http/1.1 over TLS with the localhost certificate, proxying to the
    HTTP/1.1 test upstream."""
    port = free_port()
    proc = start_nginx(tmp_path, "tls", 1, (
        f"server {{ listen 127.0.0.1:{port} ssl http2; "
        f"ssl_certificate {pki / 'cert.pem'}; ssl_certificate_key {pki / 'key.pem'}; "
        f"location / {{ proxy_pass http://127.0.0.1:{upstream.port}; "
        "proxy_set_header X-Seen-Sni $ssl_server_name; "
        "proxy_set_header X-Seen-Alpn $ssl_alpn_protocol; } }"))
    wait_port(port, proc)
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait()


@pytest.mark.parametrize("protocol,alpn", [("http1", "http/1.1"), ("http2", "h2")])
def test_upstream_tls_with_sni_and_verification(tls_upstream, start_mesh, pki, curl, protocol,
                                                alpn):
    gm = start_mesh(mesh_config([tls_upstream], cluster={
        "protocol": protocol, "tls": {"sni": "localhost", "ca": str(pki / "ca.pem")}}))
    r = subprocess.run([curl, "-s", gm.url + "/echo"], capture_output=True, timeout=30)
    meta = json.loads(r.stdout.split(b"\n", 1)[0])
    assert meta["headers"]["x-seen-sni"] == "localhost"
    assert meta["headers"]["x-seen-alpn"] == alpn


def test_upstream_tls_verification_failure_is_503(tls_upstream, start_mesh, pki, curl):
    gm = start_mesh(mesh_config([tls_upstream], cluster={
        "tls": {"sni": "localhost", "ca": str(pki / "other-ca.pem")}}))
    r = subprocess.run([curl, "-s", "-i", gm.url + "/"], capture_output=True, timeout=30)
    assert r.stdout.startswith(b"HTTP/1.1 503"), r.stdout
    assert "CERTIFICATE_VERIFY_FAILED" in gm.access()[0]["details"]
    # Without a CA nothing is verified (Envoy without a validation context): it connects.
    gm2 = start_mesh(mesh_config([tls_upstream], cluster={"tls": {}}))
    r = subprocess.run([curl, "-s", gm2.url + "/"], capture_output=True, timeout=30)
    assert r.stdout == b"hello from up1\n"


def test_tls_config_errors_name_the_key(tmp_path, pki):
    from greenmesh.config import ConfigError, load_dict
    cfg = mesh_config(["127.0.0.1:1"], listener={"tls": {
        "certificate_chain": str(pki / "cert.pem"), "private_key": str(tmp_path / "nope.pem")}},
        cluster={"tls": {"ca": str(pki / "ca.pem"), "bogus": 1}})
    with pytest.raises(ConfigError) as e:
        load_dict(cfg)
    assert e.value.errors == [
        f"listeners[0].tls.private_key: cannot read {tmp_path / 'nope.pem'}: "
        "No such file or directory",
        "clusters[0].tls.bogus: unknown key (expected one of sni, ca)",
    ]
    cfg["listeners"][0]["tls"]["private_key"] = str(pki / "ca.pem")  # not the cert's key
    cfg["clusters"][0]["tls"] = {}
    with pytest.raises(ConfigError) as e:
        load_dict(cfg)
    assert e.value.errors[0].startswith("listeners[0].tls: certificate and key do not load")
