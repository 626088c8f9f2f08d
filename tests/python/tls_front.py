"""A real TLS front for a Temporal dev server: nginx (Debian's, installed by `make system-packages`) with
`grpc_pass`, on free ports, with certificates this module makes with the `openssl` command.

- `mtls_port`: TLS, and a client certificate signed by the test CA is required;
- `key_port`: TLS, and `authorization: Bearer <key>` must carry one of `api_keys`;
- `metadata_port`: TLS, and the gRPC metadata `x-test-tenant: acme` is required (403 without).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@dataclass(frozen=True)
class Pki:
    """A CA, a server certificate for localhost and 127.0.0.1, a client certificate, and a stranger CA
    with a client certificate of its own."""

    folder: Path

    def read(self, name: str) -> bytes:
        return (self.folder / name).read_bytes()


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    for ca in ("ca", "stranger-ca"):
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
                 "-subj", f"/CN=test {ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.pem", cwd=folder)  # fmt: skip
    # X.509 v3 (extensions) throughout: rustls's webpki refuses v1 certificates.
    (folder / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    (folder / "client.ext").write_text("basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    for name, ca, ext in (("server", "ca", "server.ext"), ("client", "ca", "client.ext"),
                          ("stranger", "stranger-ca", "client.ext")):  # fmt: skip
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=folder)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
                 "-days", "2", "-out", f"{name}.pem", "-extfile", ext, cwd=folder)  # fmt: skip
    return Pki(folder)


class TlsFront:
    """nginx in front of `upstream` (host:port of a dev server's gRPC frontend)."""

    def __init__(self, folder: Path, upstream: str, api_keys: list[str]) -> None:
        self.folder = folder
        self.pki = make_pki(folder / "pki")
        self.mtls_port, self.key_port, self.metadata_port = free_port(), free_port(), free_port()
        self.api_keys = api_keys
        keys = "\n".join(f'        "Bearer {key}" 1;' for key in api_keys)
        pki = self.pki.folder
        (folder / "logs").mkdir(exist_ok=True)
        (folder / "nginx.conf").write_text(f"""
daemon off;
master_process off;
pid {folder}/nginx.pid;
error_log {folder}/logs/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {folder}/body;
    map $http_authorization $key_ok {{
        default 0;
{keys}
    }}
    ssl_certificate {pki}/server.pem;
    ssl_certificate_key {pki}/server.key;
    server {{
        listen 127.0.0.1:{self.mtls_port} ssl http2;
        ssl_client_certificate {pki}/ca.pem;
        ssl_verify_client on;
        location / {{ grpc_pass grpc://{upstream}; }}
    }}
    server {{
        listen 127.0.0.1:{self.key_port} ssl http2;
        location / {{
            if ($key_ok = 0) {{ return 401; }}
            grpc_pass grpc://{upstream};
        }}
    }}
    server {{
        listen 127.0.0.1:{self.metadata_port} ssl http2;
        location / {{
            if ($http_x_test_tenant != "acme") {{ return 403; }}
            grpc_pass grpc://{upstream};
        }}
    }}
}}
""")
        self.process = subprocess.Popen(
            [NGINX, "-p", str(folder), "-c", str(folder / "nginx.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                said = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"nginx exited: {said}")
            try:
                for port in (self.mtls_port, self.key_port, self.metadata_port):
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not listen within 10 s")

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()
