"""``greenmesh --config PATH``: the only place that monkey-patches."""

from __future__ import annotations

import argparse
import os
import sys


def _parser() -> argparse.ArgumentParser:
    from greenmesh import __version__

    p = argparse.ArgumentParser(prog="greenmesh", description="A service-mesh data plane on gevent.")
    p.add_argument("--config", default="etc/mesh.yaml", help="YAML config (default etc/mesh.yaml)")
    p.add_argument("--validate", action="store_true",
                   help="load and check the config, print ok or the errors, exit 0 or 1")
    p.add_argument("--version", action="version", version=f"greenmesh {__version__}")
    p.add_argument("--log-level", default="info",
                   choices=("debug", "info", "warning", "error", "critical"))
    p.add_argument("--log-format", choices=("json", "console"),
                   help="default: console when stdout is a terminal, else json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # gRPC's C core writes its own log lines (e.g. "Got goaway" at INFO when the control plane
    # restarts) straight to stderr, outside the structured log: only its errors, unless the
    # operator asks for more. Set before grpc loads; an embedding application keeps its own.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    from gevent import monkey

    # Before the config loads: it imports user filter modules, which must see gevent's socket.
    monkey.patch_all()
    from greenmesh.config import ConfigError, load_file
    from greenmesh.filters.registry import FilterRegistry

    filters = FilterRegistry()
    try:
        config = load_file(args.config, filters=filters)
    except ConfigError as e:
        sys.stderr.write("".join(f"{line}\n" for line in e.errors))
        return 1
    if args.validate:
        sys.stdout.write("ok\n")
        return 0

    import signal

    import gevent
    import gevent.event

    from greenmesh.log import configure
    from greenmesh.mesh import Mesh

    logging_setup = configure(args.log_level, args.log_format)
    _raise_file_limit()
    mesh = Mesh(config, access_log=logging_setup.access_log(), filters=filters,
                set_log_level=logging_setup.set_level)
    # The handlers go in before the listeners accept: a SIGTERM that comes as soon as the first
    # request is answered still drains (it used to find the default action, on a loaded box).
    stop_asked = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stop_asked.set)
    gevent.signal_handler(signal.SIGINT, stop_asked.set)
    gevent.signal_handler(signal.SIGHUP, lambda: gevent.spawn(_reload, mesh, args.config, filters))
    try:
        mesh.start()
    except OSError as e:
        sys.stderr.write(f"greenmesh: cannot start: {e}\n")
        return 1

    # Everything loaded so far (envoy-data-plane alone is ~50 modules of pydantic schemas)
    # lives as long as the process: keep it out of the cyclic GC's full passes, which a big
    # config update would otherwise trigger mid-traffic.
    import gc
    gc.freeze()

    def stop_when_asked() -> None:
        stop_asked.wait()
        mesh.stop()

    gevent.spawn(stop_when_asked)
    mesh.wait()
    return 0


def _reload(mesh, path: str, filters) -> None:
    """SIGHUP: the file again. Refused whole if it has an error (the old config serves on);
    else applied with what did not change left alone."""
    import structlog

    from greenmesh.config import ConfigError, load_file
    log = structlog.get_logger("greenmesh")
    try:
        config = load_file(path, filters=filters)
    except ConfigError as e:
        log.error("config_reload_refused", path=path, errors=e.errors)
        return
    changes = mesh.reload(config)
    if changes:
        log.info("config_reloaded", path=path, **changes)
    else:
        log.info("config_unchanged", path=path)


def _raise_file_limit() -> None:
    """The soft file limit up to the hard one, as Go programs (MOSN) do at start: the default
    connection limit is sized from it. Only the CLI does this; an embedded mesh leaves its
    host's limits alone."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # a hard limit some kernels refuse as a soft one
            pass


if __name__ == "__main__":
    sys.exit(main())
