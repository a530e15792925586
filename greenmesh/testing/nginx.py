"""nginx as a real peer for tests and benchmarks (an h2c upstream, a `return 200` server)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def nginx_binary() -> str:
    path = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx")
                                     else None)
    if path is None:
        raise FileNotFoundError("nginx is not installed (scripts/test.sh installs it)")
    return path


def nginx_conf(tmp: Path, name: str, workers: int, server: str) -> Path:
    """A self-contained config whose pid, logs and temp files all live under ``tmp``."""
    conf = tmp / f"{name}.conf"
    conf.write_text(f"""
worker_processes {workers};
daemon off;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/{name}-body;
  proxy_temp_path {tmp}/{name}-proxy;
  fastcgi_temp_path {tmp}/{name}-fcgi;
  uwsgi_temp_path {tmp}/{name}-uwsgi;
  scgi_temp_path {tmp}/{name}-scgi;
  keepalive_requests 1000000;
  {server}
}}
""")
    return conf


def start_nginx(tmp: Path, name: str, workers: int, server: str) -> subprocess.Popen:
    return subprocess.Popen([nginx_binary(), "-c", str(nginx_conf(tmp, name, workers, server))],
                            stderr=subprocess.DEVNULL)


def h2c_proxy_server(port: int, upstream_port: int, max_requests: int = 1000000) -> str:
    """An h2c listener proxying to an HTTP/1.1 upstream, unbuffered both ways; it sends GOAWAY
    after ``max_requests`` streams on a connection."""
    return (f"server {{ listen 127.0.0.1:{port} http2; client_max_body_size 0; "
            f"keepalive_requests {max_requests}; "
            f"location / {{ proxy_pass http://127.0.0.1:{upstream_port}; "
            "proxy_http_version 1.1; proxy_set_header Connection \"\"; "
            "proxy_request_buffering off; proxy_buffering off; } }")
