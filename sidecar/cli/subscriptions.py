"""``sidecar subscriptions list | subscribe | unsubscribe | check``: the WABA's subscribed apps.

Thin: parse flags, build a ``GraphClient``, call it, print; ``check --probe`` sends the
verification GET through ``sidecar.tools.probe`` (the same probe as ``certs probe``).
Graph failures are raised as ``GraphError`` subclasses and become one stderr line and
exit 1/3/4/5 in ``cli.main``; bad flags are ``UsageError`` (exit 2).  Rate-limit waits are
announced on stderr.
Neither the access token nor the verify token is ever printed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from sidecar.cli._args import graph_url, https_url, non_negative_int, positive_float
from sidecar.cli._output import format_table, print_json
from sidecar.config import Config, GraphConfig, load_config
from sidecar.errors import UsageError
from sidecar.graph import GraphClient, SubscribedApp, validate_waba_id
from sidecar.logs import redact_query
from sidecar.secret import Secret
from sidecar.tools.probe import ProbeReport, probe

__all__ = ["register", "run"]

DEFAULT_TOKEN_ENV = "META_ACCESS_TOKEN"
MAX_WAIT_S = 60.0
_GRAPH_DEFAULTS = GraphConfig()  # slots dataclass: defaults live on instances, not the class


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "subscriptions",
        help="list, subscribe, unsubscribe or check the WABA's subscribed apps (Graph API)",
        description="Graph API /{WABA_ID}/subscribed_apps: GET, POST, DELETE, and a health check.",
    )
    commands = parser.add_subparsers(dest="subscriptions_command", metavar="ACTION",
                                     parser_class=type(parser))
    commands.required = True
    common = _common_flags()
    commands.add_parser("list", parents=[common], help="list the apps subscribed to the WABA",
                        description="GET /{WABA_ID}/subscribed_apps")
    subscribe = commands.add_parser("subscribe", parents=[common],
                                    help="subscribe this app to the WABA (idempotent)",
                                    description="POST /{WABA_ID}/subscribed_apps")
    subscribe.add_argument("--override-callback-uri", metavar="URL", type=https_url,
                           help="WABA-level callback override (https://…); Meta then sends "
                                "the verification GET to it")
    subscribe.add_argument("--verify-token", metavar="T",
                           help="verify token for the override (default: meta.verify_token "
                                "from -c FILE)")
    commands.add_parser("unsubscribe", parents=[common], help="unsubscribe this app from the WABA",
                        description="DELETE /{WABA_ID}/subscribed_apps")
    check = commands.add_parser(
        "check", parents=[common], help="confirm the app is subscribed (and the endpoint verifies)",
        description="exit 0 if the WABA has a subscribed app (the one given by --app-id, if "
                    "any) and, with --probe, the endpoint answers the verification GET")
    check.add_argument("--app-id", metavar="ID", help="the app that must be subscribed")
    check.add_argument("--probe", metavar="URL",
                       help="callback URL to send a verification GET to, over mTLS")
    check.add_argument("--cert", metavar="C", help="client certificate (PEM) for --probe")
    check.add_argument("--key", metavar="K", help="client private key (PEM) for --probe")
    check.add_argument("--ca", metavar="CA", help="CA bundle to trust for --probe "
                                                   "(default: system trust store)")
    parser.set_defaults(func=run)


def _common_flags() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--waba-id", required=True, metavar="ID",
                        help="WhatsApp Business Account id (digits)")
    common.add_argument("-c", "--config", metavar="FILE",
                        help="config file: graph.* defaults (required for check)")
    common.add_argument("--token-env", default=DEFAULT_TOKEN_ENV, metavar="NAME",
                        help=f"env var holding the Graph access token (default {DEFAULT_TOKEN_ENV}"
                             "; falls back to graph.access_token in -c FILE)")
    common.add_argument("--api-version", metavar="VER",
                        help=f"Graph API version (default graph.api_version or "
                             f"{_GRAPH_DEFAULTS.api_version})")
    common.add_argument("--graph-url", metavar="URL", type=graph_url,
                        help=f"Graph API base URL (default graph.base_url or "
                             f"{_GRAPH_DEFAULTS.base_url})")
    common.add_argument("--json", action="store_true", help="print JSON")
    common.add_argument("--max-retries", type=non_negative_int, default=3, metavar="N",
                        help="retries when rate limited (default 3; at most 60 s of waiting)")
    common.add_argument("--timeout-s", type=positive_float, default=10.0, metavar="S",
                        help="request timeout in seconds (default 10)")
    return common


# -------------------------------------------------------------------------- dispatch


def run(args: argparse.Namespace) -> int:
    validate_waba_id(args.waba_id)
    action = args.subscriptions_command
    if action == "check" and not args.config:
        raise UsageError("subscriptions check needs -c FILE (for the verify token)")
    config = load_config(args.config) if args.config else None
    override: str | None = None
    verify_token: Secret | None = None
    if action == "check":
        _check_probe_flags(args)
    elif action == "subscribe":
        override, verify_token = _override(args, config)
    with _client(args, config) as client:
        if action == "list":
            return _list(client, args)
        if action == "subscribe":
            return _subscribe(client, args, override, verify_token)
        if action == "unsubscribe":
            return _unsubscribe(client, args)
        assert config is not None
        return _check(client, args, config)


def _client(args: argparse.Namespace, config: Config | None) -> GraphClient:
    graph = config.graph if config is not None else _GRAPH_DEFAULTS
    return GraphClient(
        args.graph_url or graph.base_url,
        args.api_version or graph.api_version,
        _token(args.token_env, graph),
        timeout_s=args.timeout_s,
        max_retries=args.max_retries,
        max_wait_s=MAX_WAIT_S,
        on_wait=_say_wait,
    )


def _token(env_name: str, graph: GraphConfig) -> Secret:
    value = os.environ.get(env_name, "")
    if value:
        return Secret(value)
    if graph.access_token is not None:
        return graph.access_token
    raise UsageError(f"no Graph access token: set the {env_name} environment variable "
                     "(or graph.access_token in the config)")


def _say_wait(message: str) -> None:
    sys.stderr.write(f"sidecar: {message}\n")
    sys.stderr.flush()


# -------------------------------------------------------------------------- list


def _list(client: GraphClient, args: argparse.Namespace) -> int:
    apps = client.list_subscribed_apps(args.waba_id)
    if args.json:
        print_json([asdict(app) for app in apps])
    elif not apps:
        print(_no_apps_line(args.waba_id))
    else:
        print(_table(apps))
    return 0


def _no_apps_line(waba_id: str) -> str:
    return (f"no apps subscribed to WABA {waba_id}: webhooks for it will not arrive "
            f"(run: sidecar subscriptions subscribe --waba-id {waba_id})")


def _table(apps: Sequence[SubscribedApp]) -> str:
    return format_table(("APP ID", "NAME", "LINK", "OVERRIDE"), [
        (a.app_id, a.name or "-", a.link or "-", a.override_callback_uri or "-") for a in apps])


# -------------------------------------------------------------------------- (un)subscribe


def _override(args: argparse.Namespace, config: Config | None) -> tuple[str | None, Secret | None]:
    uri: str | None = args.override_callback_uri
    if uri is None:
        if args.verify_token is not None:
            raise UsageError("--verify-token is only used with --override-callback-uri")
        return None, None
    if args.verify_token:
        return uri, Secret(args.verify_token)
    if config is not None:
        return uri, config.meta.verify_token
    raise UsageError("--override-callback-uri needs --verify-token T (or -c FILE with "
                     "meta.verify_token)")


def _subscribe(client: GraphClient, args: argparse.Namespace, override: str | None,
               verify_token: Secret | None) -> int:
    client.subscribe(args.waba_id, override_callback_uri=override, verify_token=verify_token)
    if args.json:
        print_json({"success": True})
    elif override is not None:
        print(f"subscribed app to WABA {args.waba_id} with callback override {override} "
              "(Meta sends the verification GET there now)")
    else:
        print(f"subscribed app to WABA {args.waba_id}")
    return 0


def _unsubscribe(client: GraphClient, args: argparse.Namespace) -> int:
    client.unsubscribe(args.waba_id)
    if args.json:
        print_json({"success": True})
    else:
        print(f"unsubscribed app from WABA {args.waba_id}")
    return 0


# -------------------------------------------------------------------------- check


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What ``check`` shows of a ``ProbeReport``: the verdict and one line."""

    ok: bool
    detail: str


def _check_probe_flags(args: argparse.Namespace) -> None:
    if args.probe is None:
        if args.cert or args.key or args.ca:
            raise UsageError("--cert, --key and --ca are only used with --probe URL")
        return
    if not args.probe.startswith("https://"):
        raise UsageError("--probe must be an https:// URL")
    if not (args.cert and args.key):
        raise UsageError("--probe needs --cert C and --key K (the client certificate pair)")


def _check(client: GraphClient, args: argparse.Namespace, config: Config) -> int:
    apps = client.list_subscribed_apps(args.waba_id)
    problems = _subscription_problems(apps, args.waba_id, args.app_id)
    result = None if args.probe is None else _probe(args, config)
    ok = not problems and (result is None or result.ok)
    if args.json:
        print_json({"ok": ok, "waba_id": args.waba_id, "apps": [asdict(a) for a in apps],
                    "problems": problems,
                    "probe": None if result is None else asdict(result)})
    else:
        _print_check(apps, args.waba_id, problems, result)
    return 0 if ok else 1


def _probe(args: argparse.Namespace, config: Config) -> ProbeResult:
    """Meta's verification GET over mTLS with the config's verify token."""
    report = probe(args.probe, cert=Path(args.cert), key=Path(args.key),
                   ca=Path(args.ca) if args.ca else None,
                   verify_token=config.meta.verify_token, timeout_s=args.timeout_s)
    return ProbeResult(report.ok, _probe_detail(redact_query(args.probe), report))


def _probe_detail(url: str, report: ProbeReport) -> str:
    if report.ok:
        return f"{url} answered the verification GET with the challenge"
    if report.http_status is None:
        return f"{url}: verification GET failed ({report.reason})"
    return f"{url}: {report.reason}"


def _subscription_problems(apps: Sequence[SubscribedApp], waba_id: str,
                           app_id: str | None) -> list[str]:
    if not apps:
        return [_no_apps_line(waba_id)]
    if app_id is not None and all(a.app_id != app_id for a in apps):
        found = ", ".join(a.app_id for a in apps)
        return [f"app {app_id} is not subscribed to WABA {waba_id} (subscribed: {found}); "
                f"run: sidecar subscriptions subscribe --waba-id {waba_id} with that app's token"]
    return []


def _print_check(apps: Sequence[SubscribedApp], waba_id: str, problems: Sequence[str],
                 result: ProbeResult | None) -> None:
    for app in apps:
        override = f", callback override {app.override_callback_uri}" \
            if app.override_callback_uri else ""
        print(f"OK   app {app.app_id} ({app.name or 'no name'}) is subscribed to WABA "
              f"{waba_id}{override}")
    for problem in problems:
        print(f"FAIL {problem}")
    if result is not None:
        print(f"{'OK  ' if result.ok else 'FAIL'} probe: {result.detail}")
