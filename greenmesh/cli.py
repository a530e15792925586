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
    p.add_argument("--workers", type=_workers,
                   help="processes serving the same addresses (a number, or auto: one per "
                        "CPU); default: the config's workers, else 1")
    # Set by the parent for each worker it starts: which one it is, and its private admin.
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-admin", help=argparse.SUPPRESS)
    return p


def _workers(value: str) -> int:
    if value == "auto":
        return os.cpu_count() or 1
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError("expected a positive number or auto")
    return int(value)


def _as_worker(config, admin: str):
    """A worker's config: listeners shared with the other workers, and admin on the private
    address the parent asks it on."""
    from greenmesh.config.reader import address
    from greenmesh.workers import shared
    return shared(config, address(admin))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["status"]:  # ``greenmesh status``: reads a running one's admin
        from greenmesh.status import main as status
        return status(argv[1:])
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

    workers = args.workers or config.workers
    if workers > 1 and args.worker is None:
        return _supervise(args, config, workers)
    if args.worker is not None:
        config = _as_worker(config, args.worker_admin)
    logging_setup = configure(args.log_level, args.log_format, worker=args.worker)
    _raise_file_limit()
    mesh = Mesh(config, access_log=logging_setup.access_log(), filters=filters,
                set_log_level=logging_setup.set_level, workers=workers,
                log_line=logging_setup.line)
    # The handlers go in before the listeners accept: a SIGTERM that comes as soon as the first
    # request is answered still drains (it used to find the default action, on a loaded box).
    stop_asked = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stop_asked.set)
    gevent.signal_handler(signal.SIGINT, stop_asked.set)
    gevent.signal_handler(signal.SIGUSR1, mesh.reopen_logs)
    gevent.signal_handler(signal.SIGHUP, lambda: gevent.spawn(
        _reload, mesh, args.config, filters, args.worker_admin if args.worker else None))
    try:
        mesh.start()
    except OSError as e:
        sys.stderr.write(f"greenmesh: cannot start: {e}\n")
        return 1

    _banner(mesh)
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


def _banner(mesh) -> None:
    """What to try, from the config as loaded and the addresses as bound (the run script's
    banner used to be written by hand, and went stale)."""
    import structlog
    commands = []
    for lst in mesh.listeners.values():
        host, port = lst.address
        protocol = lst.config.protocol
        scheme = "https" if lst.config.tls else "http"
        if protocol in ("http1", "auto"):
            commands.append(f"curl -i {scheme}://{host}:{port}/")
        if protocol in ("http2", "auto"):
            commands.append(f"curl -i --http2-prior-knowledge {scheme}://{host}:{port}/")
    if mesh.admin is not None:
        host, port = mesh.admin.address
        commands.append(f"curl http://{host}:{port}/help")
    structlog.get_logger("greenmesh").info("try", commands=commands)


def _supervise(args, config, workers: int) -> int:
    """The parent of ``workers`` worker processes (see greenmesh.workers)."""
    import signal

    import gevent

    from greenmesh.log import configure
    from greenmesh.workers import Supervisor
    configure(args.log_level, args.log_format)
    child = ["--config", args.config, "--log-level", args.log_level,
             *(["--log-format", args.log_format] if args.log_format else []),
             "--workers", str(workers)]
    supervisor = Supervisor(config, child, workers)
    gevent.signal_handler(signal.SIGTERM, lambda: gevent.spawn(supervisor.stop))
    gevent.signal_handler(signal.SIGINT, lambda: gevent.spawn(supervisor.stop))
    gevent.signal_handler(signal.SIGHUP, lambda: supervisor.signal(signal.SIGHUP))
    gevent.signal_handler(signal.SIGUSR1, lambda: supervisor.signal(signal.SIGUSR1))
    try:
        supervisor.start()
    except OSError as e:
        sys.stderr.write(f"greenmesh: cannot start: {e}\n")
        supervisor.stop()
        return 1
    supervisor.wait()
    return 0


def _reload(mesh, path: str, filters, worker_admin: str | None = None) -> None:
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
    if worker_admin is not None:
        config = _as_worker(config, worker_admin)
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
