"""The W&B mode of a command (online, offline, disabled) and where its credentials are.

Looked up locally, without network: ``WANDB_API_KEY``, an identity token file, or the netrc
entry of the configured W&B host. Also the tracking warning every module of the package gives.
"""

from __future__ import annotations

import os
import re
import warnings

from reports.text import warning_line

__all__ = [
    "DISABLED",
    "MODES",
    "OFFLINE",
    "ONLINE",
    "TrackingWarning",
    "api_key_configured",
    "one_line_warnings",
    "resolve_mode",
    "warn",
]

ONLINE, OFFLINE, DISABLED = "online", "offline", "disabled"
#: the modes in the order a session degrades through them (a shared level indexes this)
MODES = (ONLINE, OFFLINE, DISABLED)


class TrackingWarning(UserWarning):
    """W&B tracking degraded (online → offline → none); training goes on."""


def warn(message: str) -> None:
    """Give ``message`` as a :class:`TrackingWarning` (attributed to the caller's caller)."""
    warnings.warn(message, TrackingWarning, stacklevel=3)


def one_line_warnings() -> None:
    """Show :class:`TrackingWarning` as one ``warning: ...`` line (not file, line and source);
    other warnings keep their format. For the command line and its workers."""
    if getattr(warnings.formatwarning, "_hat_bench", False):
        return
    default = warnings.formatwarning

    def formatwarning(message, category, filename, lineno, line=None):
        if isinstance(category, type) and issubclass(category, TrackingWarning):
            return warning_line(message) + "\n"
        return default(message, category, filename, lineno, line)

    formatwarning._hat_bench = True  # type: ignore[attr-defined]
    warnings.formatwarning = formatwarning


def api_key_configured() -> bool:
    """True when W&B credentials are configured on this machine (no network access).

    Looks where wandb itself looks: ``WANDB_API_KEY``, ``WANDB_IDENTITY_TOKEN_FILE``, then the
    netrc file (``NETRC`` or ``~/.netrc``) entry for the configured W&B host.
    """
    if os.environ.get("WANDB_API_KEY", "").strip():
        return True
    if os.environ.get("WANDB_IDENTITY_TOKEN_FILE", "").strip():
        return True
    base_url = _base_url()
    try:
        # lazy: wandb costs seconds of start-up
        from wandb.sdk.lib import wbauth

        if base_url is None:
            import wandb

            base_url = wandb.Settings().base_url
        return bool(wbauth.read_netrc_auth(host=base_url))
    except Exception:  # noqa: BLE001 - unreadable netrc, malformed key, moved wandb internals
        return _plain_netrc_key(base_url)


def _base_url() -> str | None:
    """The W&B server: WANDB_BASE_URL, else ``base_url`` of the global settings file that
    ``wandb login --host`` writes (``$WANDB_CONFIG_DIR/settings``), else None (wandb's
    default)."""
    if os.environ.get("WANDB_BASE_URL", "").strip():
        return os.environ["WANDB_BASE_URL"].strip()
    import configparser

    folder = os.environ.get("WANDB_CONFIG_DIR") or os.path.join("~", ".config", "wandb")
    parser = configparser.ConfigParser()
    try:
        parser.read(os.path.join(os.path.expanduser(folder), "settings"))
        return parser.get("default", "base_url", fallback=None) or None
    except configparser.Error:
        return None


def _plain_netrc_key(base_url: str | None) -> bool:
    """Fallback netrc lookup (standard library only)."""
    import netrc

    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        auth = netrc.netrc(path)
    except (OSError, netrc.NetrcParseError):
        return False
    hosts = ["api.wandb.ai"]
    if base_url:
        hosts.insert(0, re.sub(r"^\w+://", "", base_url).split("/")[0])
    return any((auth.authenticators(h) or (None, None, None))[2] for h in hosts)


def resolve_mode(mode: str | None) -> str:
    """The W&B mode to use: ``mode`` itself, or for None: WANDB_MODE when it says offline or
    disabled, else ``online`` when :func:`api_key_configured`, else ``offline``."""
    if mode is not None:
        if mode not in MODES:
            raise ValueError(f"unknown W&B mode {mode!r}: use online, offline or disabled")
        return mode
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env in ("offline", "dryrun"):
        return OFFLINE
    if env == "disabled":
        return DISABLED
    return ONLINE if api_key_configured() else OFFLINE
