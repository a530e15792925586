"""A WSGI app on gunicorn-gevent that calls two services through the mesh it embeds:

    bash scripts/example.sh                  # the services, then gunicorn with this app
    curl -s http://127.0.0.1:8000/users/7

etc/gunicorn_conf.py starts one mesh per worker and hands it to the app in the WSGI environ
(``greenmesh.mesh``). ``mesh.http`` is routed by the config's ``outbound`` route config:
``http://users/...`` goes to the HTTP/1.1 service, ``http://search/...`` to the HTTP/2 one.
A call the mesh cannot answer raises a ``MeshError`` with Envoy's response flags.
"""

from __future__ import annotations

import json

from greenmesh.client.errors import MeshError


def app(environ, start_response):
    mesh = environ["greenmesh.mesh"]
    path = environ["PATH_INFO"]
    if not path.startswith("/users/"):
        start_response("404 Not Found", [("content-type", "text/plain")])
        return [b"try /users/<id>\n"]
    user_id = path.rsplit("/", 1)[1]
    try:
        user = mesh.http.get(f"http://users/echo/users/{user_id}", timeout=1)
        search = mesh.http.post("http://search/query", json={"user": user_id})
        body = {"user": {"status": user.status_code, "served_by": user.headers["x-upstream"],
                         "request": user.content.split(b"\n", 1)[0].decode()},
                "search": {"status": search.status_code, **search.json()}}
        status = "200 OK"
    except MeshError as e:  # e.flags: Envoy's response flags (UF, UT, UO, UH, NR...)
        body = {"error": str(e), "flags": [f.value for f in e.flags]}
        status = "502 Bad Gateway"
    data = json.dumps(body, indent=1).encode() + b"\n"
    start_response(status, [("content-type", "application/json"),
                            ("content-length", str(len(data)))])
    return [data]
