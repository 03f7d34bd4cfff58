"""`odm-farm user add|list|remove|token`: manage user accounts in the farm's Redis (ODM_FARM_REDIS_URL)."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from typing import Any

from shared.accounts import Accounts
from shared.errors import InvalidRequest
from shared.settings import Settings


def add_user_command(sub: Any, settings: Callable[[argparse.Namespace], Settings]) -> None:
    """Register `user` under the CLI's subparsers; `settings` builds Settings from the parsed flags."""
    p = sub.add_parser("user", help="manage user accounts (add, list, remove, token)")
    actions = p.add_subparsers(dest="action", required=True)

    add = actions.add_parser("add", help="create a user")
    add.add_argument("name")
    add.add_argument("--password", help="the password (default: asked for, or read with --password-stdin)")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    add.add_argument("--admin", action="store_true", help="the user sees and manages every task")
    for flag, what in (
        ("images", "images per task"),
        ("running", "tasks running at once"),
        ("bytes", "bytes of uploads stored"),
    ):
        add.add_argument(
            f"--max-{flag}",
            type=int,
            metavar="N",
            help=f"{what} (0 = unlimited; default: ODM_FARM_USER_MAX_{flag.upper()})",
        )

    actions.add_parser("list", help="list users and their limits")

    remove = actions.add_parser("remove", help="delete a user and revoke their tokens (their tasks stay)")
    remove.add_argument("name")

    token = actions.add_parser("token", help="print a new login token for a user, or revoke them all")
    token.add_argument("name")
    token.add_argument(
        "--hours", type=float, help="how long the token is valid (default: ODM_FARM_TOKEN_HOURS)"
    )
    token.add_argument("--revoke", action="store_true", help="revoke every token of the user instead")

    p.set_defaults(func=lambda args: run(args, settings(args)))


def run(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.redis_url:
        sys.exit("odm-farm user: ODM_FARM_REDIS_URL is required (the Redis of the farm)")
    from shared.taskstore import TaskStore

    accounts = Accounts(TaskStore.from_url(settings.redis_url).r, settings)
    try:
        return _ACTIONS[args.action](accounts, args)
    except InvalidRequest as exc:
        print(f"odm-farm user: {exc.message}", file=sys.stderr)
        return 1


def _add(accounts: Accounts, args: argparse.Namespace) -> int:
    password = args.password
    if password is None and args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif password is None:
        password = getpass.getpass(f"Password for {args.name}: ")
    accounts.add_user(
        args.name,
        password,
        admin=args.admin,
        max_images=args.max_images,
        max_running=args.max_running,
        max_bytes=args.max_bytes,
    )
    print(f"user {args.name} added")
    return 0


def _list(accounts: Accounts, args: argparse.Namespace) -> int:
    print(f"{'NAME':24} {'ADMIN':6} {'MAX IMAGES':>10} {'MAX RUNNING':>11} {'MAX BYTES':>14}")
    for user in accounts.users():
        limits = accounts.limits(user["name"])
        shown = [
            "-" if v is None else str(v) for v in (limits.max_images, limits.max_running, limits.max_bytes)
        ]
        admin = "yes" if user.get("admin") == "1" else "no"
        print(f"{user['name']:24} {admin:6} {shown[0]:>10} {shown[1]:>11} {shown[2]:>14}")
    return 0


def _remove(accounts: Accounts, args: argparse.Namespace) -> int:
    if not accounts.remove_user(args.name):
        return _no_such_user(args.name)
    print(f"user {args.name} removed")
    return 0


def _token(accounts: Accounts, args: argparse.Namespace) -> int:
    if not accounts.user(args.name):
        return _no_such_user(args.name)
    if args.revoke:
        print(f"{accounts.revoke_tokens(args.name)} token(s) of {args.name} revoked")
        return 0
    print(accounts.issue_token(args.name, args.hours))
    return 0


def _no_such_user(name: str) -> int:
    print(f"odm-farm user: no user {name}", file=sys.stderr)
    return 1


_ACTIONS: dict[str, Callable[[Accounts, argparse.Namespace], int]] = {
    "add": _add,
    "list": _list,
    "remove": _remove,
    "token": _token,
}
