"""Flower's SuperLink with only the Fleet API on the address hospitals reach.

Flower 1.41 serves the Fleet API (SuperNodes), the Control API (`flwr run`,
`flwr supernode register`, `flwr ls`, `flwr stop`) and the Runtime API (the
ServerApp) from one HTTPS server on `--host:--port`. The open-source Control API
has no user authentication: anyone who reaches that port with the public
`ca.crt` can register and unregister nodes, list, start and stop runs.

This runner builds Flower's own app (`create_app` with Flower's parsed
`flower-superlink` arguments, as `flower_superlink()` does) and serves it from one
uvicorn server on two sockets: the control address (`--host`/`--port` given to
Flower, 127.0.0.1 by default) gets every API; the public address gets only the
paths under `/v1/fleet/`, and any other path there is answered 404 before Flower
sees it. Flower's ServerApp launcher reaches the Runtime API at the control
address, so it needs nothing public.

Tied to flwr 1.41's SuperLink internals; `tests/deploy/test_split_superlink.py` is
the contract test.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from importlib.metadata import version
from typing import Any

FLOWER_VERSION = "1.41."  # the release whose SuperLink internals this module uses
FLEET_PREFIX = "/v1/fleet/"

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


def check_flower_version() -> None:
    found = version("flwr")
    if not found.startswith(FLOWER_VERSION):
        raise SystemExit(
            f"fedward.split_superlink was written for flwr {FLOWER_VERSION}x and found flwr {found}: "
            "check Flower's SuperLink app (flwr.superlink.main.create_app, the /v1/fleet/ routes) "
            "and update this module and its contract test"
        )


def fleet_only_on_public(app: ASGIApp, control_port: int) -> ASGIApp:
    """`app`, except that a request arriving on any port but `control_port` may only
    reach the Fleet API. Fails closed: a request whose local address is unknown is
    treated as public."""

    async def gate(scope: Scope, receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] in ("http", "websocket"):
            server = scope.get("server")
            on_control = server is not None and server[1] == control_port
            if not on_control and not str(scope.get("path", "")).startswith(FLEET_PREFIX):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                body = b"not served here: this address serves only the Fleet API (SuperNodes)\n"
                await send({"type": "http.response.start", "status": 404,
                            "headers": [(b"content-type", b"text/plain"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await app(scope, receive, send)

    return gate


def bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(address)
    sock.set_inheritable(False)
    return sock


def serve(public_host: str, public_port: int, flower_args: list[str]) -> None:
    """Run Flower's SuperLink (parsed from `flower_args`, as `flower-superlink` would) with
    its control address as given there and the Fleet API alone on public_host:public_port."""
    import importlib

    import uvicorn
    from flwr.common.logger import log
    from flwr.supercore.http_logging import get_uvicorn_log_config
    from flwr.supercore.logger import console_handler
    from flwr.superlink.main import create_app

    flower_superlink = importlib.import_module("flwr.superlink.cli.flower_superlink")  # the module, not the function

    sys.argv = ["flower-superlink", *flower_args]
    config = flower_superlink._parse_superlink_lifespan_config()  # noqa: SLF001 - Flower's own parsing
    if config.port == public_port:
        raise SystemExit(f"the control port and the public port are both {public_port}; give them distinct ports")
    app = create_app(config, flower_superlink.SuperLinkLifespan)
    sockets = [bind(config.host, config.port), bind(public_host, public_port)]
    log(20, "Control, Runtime and Fleet API on %s:%s (the operator's side)", config.host, config.port)
    log(20, "Fleet API only on %s:%s (the hospitals' side)", public_host, public_port)
    server = uvicorn.Server(uvicorn.Config(
        app=fleet_only_on_public(app, config.port), host=config.host, port=config.port, reload=False,
        access_log=True, log_config=get_uvicorn_log_config(console_handler.level),
        ssl_keyfile=config.ssl_keyfile, ssl_certfile=config.ssl_certfile, workers=1,
    ))
    server.run(sockets=sockets)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--public-host", required=True)
    parser.add_argument("--public-port", type=int, required=True)
    parser.add_argument("flower_args", nargs=argparse.REMAINDER, help="-- then flower-superlink's arguments")
    args = parser.parse_args(argv)
    check_flower_version()
    flower_args = args.flower_args[1:] if args.flower_args[:1] == ["--"] else args.flower_args
    serve(args.public_host, args.public_port, flower_args)


if __name__ == "__main__":
    main()
