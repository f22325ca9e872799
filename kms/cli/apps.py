"""``kms app``: an app owner's key, signed policies, pushing them to nodes and reading what
nodes hold (``kms.app.owner``); ``--devnet DIR`` forms take their defaults from a devnet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from kms.app import devnet, owner
from kms.cli.common import out, print_json
from kms.cli.tee import die

app_app = typer.Typer(help="Apps and their owners' signed policies.", no_args_is_help=True)
policy_app = typer.Typer(help="An app's policy.", no_args_is_help=True)
app_app.add_typer(policy_app, name="policy")

UrlsOpt = Annotated[
    list[str] | None, typer.Option("--urls", help="Node URLs, comma-separated (repeatable).")
]
DevnetOpt = Annotated[
    Path | None, typer.Option("--devnet", help="Take the node URLs (and aliases) from a devnet.")
]


def say(line: str) -> None:
    out.print(line, highlight=False, markup=False, soft_wrap=True)


def devnet_nodes(directory: Path) -> tuple[dict[str, Any], dict[int, str]]:
    try:
        state = devnet.read_state(directory)
    except (OSError, ValueError) as exc:
        die(f"{directory} is not a devnet directory ({exc}): give --urls instead")
    return state, {int(n["index"]): str(n["http_url"]) for n in state["nodes"]}


def node_urls(urls: list[str] | None, devnet_dir: Path | None) -> dict[Any, str]:
    """The nodes to talk to, labelled: by URL, or by index for a devnet's."""
    if urls:
        try:
            return {u: u for u in owner.split_urls(urls)}
        except owner.OwnerError as exc:
            die(str(exc))
    if devnet_dir is not None:
        return dict(devnet_nodes(devnet_dir)[1])
    die("give --urls URL[,URL…] (or --devnet DIR)")


def app_id_arg(text: str, devnet_dir: Path | None) -> bytes:
    if devnet_dir is not None:
        state, _ = devnet_nodes(devnet_dir)
        try:
            return devnet.app_id_of(state, text)
        except devnet.DevnetError as exc:
            die(str(exc))
    try:
        return owner.parse_app_id(text)
    except owner.OwnerError as exc:
        die(str(exc))


def print_report(report: dict[str, Any], json_out: bool, verb: str = "pushed") -> None:
    if json_out:
        print_json(report)
        return
    where = (
        "effective everywhere"
        if report["effective_everywhere"]
        else f"lagging at {len(report['lagging'])} node(s)"
    )
    say(f"{verb} app {report['app_id']} version {report['version']}: {where}")
    acks = report["acknowledged"]
    say(f"acknowledged by {', '.join(str(a) for a in acks) if acks else '(none)'}")
    for lag in report["lagging"]:
        line = f"lagging {lag['node']}: {lag['reason']}"
        if lag.get("detail"):
            line += f": {lag['detail']}"
        if lag.get("held_version") is not None:
            line += f" (holds version {lag['held_version']})"
        say(line)


# --- create ----------------------------------------------------------------------------------


@app_app.command("create")
def app_create(
    owner_key: Annotated[
        Path | None,
        typer.Option(
            "--owner-key", help="Write a new owner key here (mode 0600, never over a file)."
        ),
    ] = None,
    devnet_dir: Annotated[Path | None, typer.Option("--devnet")] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="With --devnet: the app's alias in devnet.json.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create an app: a new owner key, from which the app id derives.

    With ``--devnet DIR --name N`` the devnet keeps the key and its operator admits a
    first policy (the demo image) at every node."""
    if owner_key is not None:
        if devnet_dir is not None:
            die("give --owner-key or --devnet, not both")
        try:
            made = owner.create_owner(owner_key)
        except owner.OwnerError as exc:
            die(str(exc))
        if json_out:
            print_json({"app_id": made.app_id.hex(), "owner_key": str(owner_key)})
        else:
            say(f"app id {made.app_id.hex()}")
            say(f"owner key written to {owner_key} (mode 0600): keep it secret")
        return
    if devnet_dir is None or name is None:
        die("give --owner-key FILE (or --devnet DIR --name NAME)")
    try:
        report = devnet.create_app(devnet_dir, name)
    except (devnet.DevnetError, OSError, ValueError) as exc:
        die(str(exc))
    if json_out:
        print_json(report)
        return
    lagging = {lag["index"]: lag["reason"] for lag in report["lagging"]}
    say(f"app {name}: app id {report['app_id']}, version {report['version']}")
    say(
        "admitted at every node"
        if report["effective_everywhere"]
        else f"not admitted at nodes {lagging}"
    )


# --- policies ----------------------------------------------------------------------------------


@policy_app.command("sign")
def app_policy_sign(
    owner_key: Annotated[Path, typer.Option("--owner-key")],
    policy: Annotated[Path, typer.Option("--policy", help="The policy TOML (docs/apps.md).")],
    mpk_hex: Annotated[str, typer.Option("--mpk", help="The committee's master public key.")],
    out_file: Annotated[Path, typer.Option("--out", help="The bundle to write (*.policy).")],
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Sign a policy TOML into an encoded policy bundle (what nodes take and keep)."""
    try:
        signer = owner.signing_owner(owner_key)
        spec = owner.read_policy(policy)
        bundle = owner.sign_policy(signer, spec, owner.parse_mpk(mpk_hex))
        owner.write_bundle(out_file, bundle)
    except owner.OwnerError as exc:
        die(str(exc))
    info = {**owner.describe_bundle(bundle), "out": str(out_file)}
    if json_out:
        print_json(info)
        return
    say(f"signed app {info['app_id']} version {info['version']} into {out_file}")
    say(
        f"{info['measurements']} measurement(s), purposes {', '.join(info['purposes']) or '(none)'}, "
        f"TCB {', '.join(info['tcb_statuses'])}, valid {info['not_before']}..{info['expires']}"
    )


@policy_app.command("push")
def app_policy_push(
    urls: UrlsOpt = None,
    bundle_file: Annotated[
        Path | None, typer.Option("--bundle", help="The signed bundle (kms app policy sign).")
    ] = None,
    devnet_dir: DevnetOpt = None,
    app_name: Annotated[
        str | None,
        typer.Option("--app", help="With --devnet and no --bundle: sign the app's next version."),
    ] = None,
    lifetime: Annotated[
        int, typer.Option("--lifetime", help="With --devnet --app: seconds until it expires.")
    ] = 7 * 86400,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Push a signed bundle to every node. Effective everywhere only once every node
    acknowledges it; otherwise names the nodes that lag and why, and exits 1."""
    if bundle_file is None:
        if devnet_dir is None or app_name is None:
            die("give --bundle FILE and --urls URL[,URL…]")
        state, _ = devnet_nodes(devnet_dir)
        app_id = app_id_arg(app_name, devnet_dir)
        try:
            report = devnet.push_next_policy(devnet_dir, state, app_id, app_name, lifetime)
        except (devnet.DevnetError, owner.OwnerError) as exc:
            die(str(exc))
        report = {
            **report,
            "lagging": [{"node": lag.pop("index"), **lag} for lag in report["lagging"]],
        }
    else:
        nodes = node_urls(urls, devnet_dir)
        try:
            report = owner.push_bundle(nodes, owner.read_bundle(bundle_file))
        except owner.OwnerError as exc:
            die(str(exc))
    print_report(report, json_out)
    raise typer.Exit(0 if report["effective_everywhere"] else 1)


@policy_app.command("show")
def app_policy_show(
    app: Annotated[str, typer.Option("--app", help="The app id (hex; an alias with --devnet).")],
    urls: UrlsOpt = None,
    devnet_dir: DevnetOpt = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The policy each node holds for an app."""
    nodes = node_urls(urls, devnet_dir)
    held = owner.policies_held(nodes, app_id_arg(app, devnet_dir))
    if json_out:
        print_json(held)
        return
    versions = ", ".join(str(v) for v in held["versions"]) or "(none)"
    say(f"app {held['app_id']}: versions held {versions}")
    for row in held["nodes"]:
        p = row.get("policy")
        if row.get("error"):
            say(f"{row['node']}: {row['error']}")
        elif p is None:
            say(f"{row['node']}: (none)")
        elif p.get("frozen"):
            say(f"{row['node']}: frozen (version floor {p.get('version_floor')})")
        else:
            purposes = p.get("purposes")
            purposes = purposes if isinstance(purposes, list) else []
            say(
                f"{row['node']}: version {p.get('version')}, expires {p.get('expires')}, "
                f"purposes {', '.join(map(str, purposes)) or '(none)'}, "
                f"owner key {p.get('owner_key')}"
            )


# --- owner rotation ----------------------------------------------------------------------------


@app_app.command("rotate-owner")
def app_rotate_owner(
    owner_key: Annotated[Path, typer.Option("--owner-key", help="The current owner key file.")],
    new_owner_key: Annotated[
        Path, typer.Option("--new-owner-key", help="Write the new owner key here (new file).")
    ],
    policy: Annotated[Path, typer.Option("--policy", help="The next version's policy TOML.")],
    mpk_hex: Annotated[str, typer.Option("--mpk")],
    out_file: Annotated[Path, typer.Option("--out", help="The bundle to write (*.policy).")],
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Hand the app to a new owner key and sign its next version with it.

    The bundle carries the rotation (signed by the old key); once nodes take it they refuse
    every policy the old key signs. The old key file records the rotation and signs no more.
    Push the bundle with ``kms app policy push``."""
    try:
        spec = owner.read_policy(policy)
        _, bundle = owner.rotate_owner(owner_key, new_owner_key, spec, owner.parse_mpk(mpk_hex))
        owner.write_bundle(out_file, bundle)
    except owner.OwnerError as exc:
        die(str(exc))
    info = {
        **owner.describe_bundle(bundle),
        "new_owner_key": str(new_owner_key),
        "out": str(out_file),
    }
    if json_out:
        print_json(info)
        return
    say(f"app {info['app_id']} now owned by {info['owner_key']} (rotation {info['rotations']})")
    say(f"new owner key written to {new_owner_key} (mode 0600)")
    say(f"signed version {info['version']} into {out_file}: push it to every node")
