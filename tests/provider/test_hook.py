"""TogetherHook: base URL handling, the registered ``together`` connection type, Test button, key hygiene."""

from __future__ import annotations

import logging

import pytest

from tests.provider.helpers import conn_json
from trait_lora.provider.hooks.together import DEFAULT_BASE_URL, TogetherHook, normalise_base_url


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("https://api.together.ai", "https://api.together.ai"),
        ("https://api.together.ai/", "https://api.together.ai"),
        ("https://api.together.ai/v1", "https://api.together.ai"),
        ("https://api.together.ai/v1/", "https://api.together.ai"),
        ("api.together.ai", "https://api.together.ai"),
        ("api.together.ai/v1", "https://api.together.ai"),
        ("  http://127.0.0.1:8123/v1/  ", "http://127.0.0.1:8123"),
        ("", DEFAULT_BASE_URL),
        (None, DEFAULT_BASE_URL),
    ],
)
def test_normalise_base_url_strips_v1_and_slashes_and_adds_a_scheme(given, expected):
    assert normalise_base_url(given) == expected


def test_a_base_url_ending_in_v1_still_reaches_the_api(fake_together, monkeypatch):
    """Users paste ``.../v1`` from Together's docs: that must not turn into ``/v1/v1/...`` 404s."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_TOGETHER_DEFAULT", conn_json(fake_together, host=fake_together.base_url + "/v1/")
    )
    ok, message = TogetherHook().test_connection()
    assert ok, message
    assert fake_together.calls == [("GET", "/v1/fine-tunes")]


def test_together_connection_type_is_registered_by_the_provider_entry_point():
    from airflow.providers_manager import ProvidersManager
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    manager = ProvidersManager()  # what the API server's connection form reads
    hook = ProvidersManagerTaskRuntime().hooks.get("together")  # what workers resolve conn types with
    assert hook is not None, "connection type 'together' is not registered"
    assert hook.hook_class_name == "trait_lora.provider.hooks.together.TogetherHook"
    assert hook.package_name == "trait-lora"
    assert hook.connection_testable  # the UI shows a Test button

    behaviour = manager.field_behaviours["together"]
    assert behaviour["relabeling"] == {"host": "API base URL", "password": "API key"}
    assert set(behaviour["hidden_fields"]) >= {"schema", "port", "login"}
    assert behaviour["placeholders"]["host"] == DEFAULT_BASE_URL
    widgets = manager.connection_form_widgets
    assert {"extra__together__max_retries", "extra__together__timeout"} <= set(widgets)


def test_test_connection_succeeds_against_the_api(together_conn):
    ok, message = TogetherHook().test_connection()
    assert ok is True
    assert together_conn.base_url in message
    assert together_conn.api_key not in message


def test_test_connection_fails_with_a_wrong_key_and_never_echoes_it(fake_together, monkeypatch, caplog):
    wrong = "tgp_wrong_" + "x" * 24
    monkeypatch.setenv("AIRFLOW_CONN_TOGETHER_DEFAULT", conn_json(fake_together, password=wrong))
    caplog.set_level(logging.DEBUG)
    hook = TogetherHook()
    ok, message = hook.test_connection()
    assert ok is False
    assert "AuthenticationError" in message
    assert fake_together.errors and fake_together.errors[0][2] == 401
    for text in (message, caplog.text, repr(hook), str(hook)):
        assert wrong not in text
        assert fake_together.api_key not in text


def test_test_connection_without_a_key_says_so(fake_together, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_TOGETHER_DEFAULT", conn_json(fake_together, password=None))
    ok, message = TogetherHook().test_connection()
    assert ok is False
    assert "no API key" in message
    assert fake_together.calls == []


def test_key_never_appears_in_repr_or_logs(together_conn, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    hook = TogetherHook()
    assert hook.test_connection()[0]
    hook.list_jobs()
    together_conn.fail_next("GET", r"^/v1/fine-tunes$", 503, times=2, retry_after=0.01)
    hook.list_jobs()  # the SDK retries, and logs that it does
    captured = capfd.readouterr()
    assert "fine-tunes" in caplog.text  # the SDK's request logging was captured, so the check has teeth
    for text in (caplog.text, captured.out, captured.err, repr(hook), str(hook), repr(hook.client)):
        assert together_conn.api_key not in text


def _self_signed(tmp_path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 that no trust store holds, and its key (PEM files)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "trait-lora test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(cert_file), str(key_file)


def test_clients_share_one_trust_store_that_still_verifies_and_follows_ssl_cert_file(tmp_path, monkeypatch):
    """The clients share one TLS context per process (building one per client was ~25 ms each), and
    that changes nothing about trust: an unknown certificate is refused, and SSL_CERT_FILE naming it
    (as a deployment behind a TLS-inspecting proxy sets it) is honoured in the same process."""
    import http.server
    import json as _json
    import ssl
    import threading

    cert_file, key_file = _self_signed(tmp_path)

    class Api(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = _json.dumps({"object": "list", "data": []}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Api)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert_file, key_file)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        conn = {
            "conn_type": "together",
            "host": f"https://127.0.0.1:{server.server_address[1]}",
            "password": "tgp_test_" + "k" * 24,
            "extra": {"max_retries": 0, "timeout": 10},
        }
        monkeypatch.setenv("AIRFLOW_CONN_TOGETHER_DEFAULT", _json.dumps(conn))
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        monkeypatch.delenv("SSL_CERT_DIR", raising=False)
        first, second = TogetherHook(), TogetherHook()
        ok, message = first.test_connection()
        assert not ok and "APIConnectionError" in message  # certificate verify failed: not trusted
        assert second.test_connection()[0] is False

        monkeypatch.setenv("SSL_CERT_FILE", cert_file)
        ok, message = TogetherHook().test_connection()
        assert ok, message
    finally:
        server.shutdown()
        server.server_close()
