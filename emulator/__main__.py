"""`python -m emulator --port N [...]`: run the emulated org until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

from aiohttp import web

from emulator.app import create_app
from emulator.pubsub import start_pubsub
from emulator.state import SAMPLE_CLIENT_ID, SAMPLE_CLIENT_SECRET, SAMPLE_REFRESH_TOKEN, EmulatorConfig


def _config(argv: list[str] | None) -> tuple[EmulatorConfig, str, int, str | None, int | None]:
    parser = argparse.ArgumentParser(prog="python -m emulator", description="Local Salesforce org emulator")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--seed", choices=["sample"], default=None)
    parser.add_argument("--records", type=int, default=0, help="extra generated Leads (benchmarks)")
    parser.add_argument("--token-ttl", type=float, default=7200, help="access token lifetime, seconds")
    parser.add_argument("--api-max", type=int, default=100_000, help="DailyApiRequests Max")
    parser.add_argument("--events-max", type=int, default=50_000, help="DailyDeliveredPlatformEvents Max")
    parser.add_argument("--jwt-public-key", type=Path, default=None, help="PEM public key for JWT bearer")
    parser.add_argument("--username", default="integration@example.com")
    parser.add_argument("--instance-url", default=None, help="base URL clients reach this org at")
    parser.add_argument("--no-control", action="store_true", help="disable the /_emulator control API")
    parser.add_argument("--pubsub-port", type=int, default=None, help="serve the Pub/Sub API (gRPC) here")
    args = parser.parse_args(argv)
    config = EmulatorConfig(
        token_ttl_seconds=args.token_ttl,
        api_max=args.api_max,
        events_max=args.events_max,
        control_enabled=not args.no_control,
        username=args.username,
        seed=args.seed,
        records=args.records,
        jwt_public_key_pem=args.jwt_public_key.read_bytes() if args.jwt_public_key else None,
    )
    return config, args.host, args.port, args.instance_url, args.pubsub_port


async def _serve(config: EmulatorConfig, host: str, port: int, instance_url: str | None,
                 pubsub_port: int | None = None) -> None:
    app = create_app(config)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if port == 0 else port
    base = instance_url or f"http://{host}:{bound}"
    if instance_url or host not in ("0.0.0.0", "::"):
        app["state"].instance_url = base  # else learned from the first request's Host header
    print(
        f"Salesforce emulator at {base} — token: POST {base}/services/oauth2/token with "
        f"grant_type=client_credentials client_id={SAMPLE_CLIENT_ID} client_secret={SAMPLE_CLIENT_SECRET}; "
        f"or grant_type=refresh_token client_id={SAMPLE_CLIENT_ID} refresh_token={SAMPLE_REFRESH_TOKEN}; "
        f"or JWT bearer (RS256, iss={SAMPLE_CLIENT_ID}, sub={config.username}, aud={base}) "
        f"{'verified with --jwt-public-key' if config.jwt_public_key_pem else 'needs --jwt-public-key'}",
        flush=True,
    )
    if pubsub_port is not None:
        bound_pubsub = await start_pubsub(app, host, pubsub_port)
        print(f"Pub/Sub API (gRPC, plaintext) at {host}:{bound_pubsub}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    config, host, port, instance_url, pubsub_port = _config(argv)
    asyncio.run(_serve(config, host, port, instance_url, pubsub_port))


if __name__ == "__main__":
    main()
