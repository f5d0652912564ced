"""The bridge between stored settings and the connector: builds its config, never logs the password."""

from __future__ import annotations

from flask import current_app

from .connectors.dynamics import ConnectionConfig, parse_allowed_endpoints, parse_allowed_networks
from .crypto import decrypt
from .models import CrmIntegration


def connector_config(*, org_url: str, odata_url: str, username: str, password: str, domain: str,
                     organization: str = "", ca_bundle: str | None = None) -> ConnectionConfig:
    """A connector config with the portal's URL-guard allowances."""
    return ConnectionConfig(
        org_url=org_url.strip(),
        odata_url=(odata_url or "").strip() or None,
        username=username.strip(),
        password=password,
        domain=(domain or "").strip(),
        organization=(organization or "").strip(),
        ca_bundle=ca_bundle,
        allowed_networks=_allowed_networks(),
        allowed_endpoints=_allowed_endpoints(),
    )


def _allowed_networks():
    return tuple(parse_allowed_networks(current_app.config.get("CRM_ALLOWED_NETWORKS", "")))


def _allowed_endpoints():
    return tuple(parse_allowed_endpoints(current_app.config.get("CRM_ALLOWED_ENDPOINTS", "")))


def config_for(integration: CrmIntegration) -> ConnectionConfig:
    """The connector config for a saved integration (decrypts the password in memory only)."""
    return connector_config(
        org_url=integration.org_url, odata_url=integration.odata_url, username=integration.username,
        password=decrypt(integration.password_encrypted) if integration.password_encrypted else "",
        domain=integration.domain, organization=integration.organization_name,
    )


def guard_problem(url: str) -> str | None:
    """Why the URL guard refuses a URL (scheme, or a non-public address not allowed), or None.

    A name that does not resolve right now is not refused here: the connection test reports it.
    """
    from .connectors.dynamics import DynamicsError, check_url
    from .connectors.dynamics.errors import BlockedUrlError, InvalidUrlError

    try:
        check_url(url, _allowed_networks(), _allowed_endpoints())
    except (BlockedUrlError, InvalidUrlError) as exc:
        return f"{exc.message} {exc.action}"
    except DynamicsError:
        return None
    return None
