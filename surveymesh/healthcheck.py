"""``python -m surveymesh.healthcheck``: a ``grpc_health_probe`` built into the image.

Container runtimes that cannot speak gRPC themselves (Docker/compose healthchecks) run
this module instead of a separately downloaded probe binary, so the image needs nothing
beyond the package's own dependencies. Kubernetes uses its native ``grpc:`` probes and
does not need it.

Usage::

    python -m surveymesh.healthcheck localhost:50052 [--service NAME] [--timeout 2]

Exit status: 0 when the server answers SERVING; 1 when it answers anything else
(NOT_SERVING, SERVICE_UNKNOWN, or NOT_FOUND for an unknown ``--service``); 2 when it
cannot be reached within the timeout; 64 for bad arguments (argparse's own exit is 2, so
usage errors are mapped to the conventional EX_USAGE to keep "unreachable" unambiguous).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

EXIT_SERVING = 0
EXIT_NOT_SERVING = 1
EXIT_UNREACHABLE = 2
EXIT_USAGE = 64


def check(address: str, *, service: str = "", timeout: float = 2.0) -> tuple[int, str]:
    """Asks ``grpc.health.v1.Health/Check`` at ``address`` once.

    Args:
        address: ``host:port`` of the gRPC server.
        service: The service name to ask about; empty asks about the server as a whole.
        timeout: Seconds for connecting and answering together.

    Returns:
        ``(exit_status, description)``; the status is one of the ``EXIT_*`` constants.
    """
    # A blocking channel keeps the probe a plain short-lived process: no event loop needed.
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(
                health_pb2.HealthCheckRequest(service=service),
                timeout=timeout,
                wait_for_ready=True,  # wait for the connection up to the deadline, not fail fast
            )
        except grpc.RpcError as err:
            code = err.code() if isinstance(err, grpc.Call) else None
            if code == grpc.StatusCode.NOT_FOUND:
                return EXIT_NOT_SERVING, f"service {service!r} is unknown to {address}"
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return EXIT_UNREACHABLE, f"{address} did not answer within {timeout:g}s"
            name = code.name if code is not None else "error"
            return EXIT_UNREACHABLE, f"{address}: {name}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status == health_pb2.HealthCheckResponse.SERVING:
        return EXIT_SERVING, f"{address}: {status}"
    return EXIT_NOT_SERVING, f"{address}: {status}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m surveymesh.healthcheck",
        description="Exit 0 only when the gRPC server at ADDRESS reports SERVING.",
    )
    parser.add_argument("address", help="host:port of the gRPC server")
    parser.add_argument("--service", default="", help="service name to check (default: server)")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds (default 2)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the probe; returns the exit status."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return EXIT_SERVING if exc.code == 0 else EXIT_USAGE  # --help exits 0
    if args.timeout <= 0:
        sys.stderr.write("--timeout must be positive\n")
        return EXIT_USAGE
    status, text = check(args.address, service=args.service, timeout=args.timeout)
    if not args.quiet:
        # A CLI's result line, read by `docker inspect` in the healthcheck log.
        (sys.stdout if status == EXIT_SERVING else sys.stderr).write(text + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
