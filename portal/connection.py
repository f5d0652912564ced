"""The bridge between stored settings and the connector: builds its config, never logs the password."""

from __future__ import annotations

from flask import current_app

from .connectors.dynamics import ConnectionConfig, parse_allowed_endpoints, parse_allowed_networks
from .connectors.dynamics.auth import DEFAULT_AUTHORITY_HOST, OnlineConfig
from .crm_tokens import shared_token_cache
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
        batch_base_seconds=float(current_app.config.get("SYNC_BATCH_BASE_SECONDS", 60.0)),
        batch_record_seconds=float(current_app.config.get("SYNC_BATCH_RECORD_SECONDS", 0.3)),
    )


def _allowed_networks():
    return tuple(parse_allowed_networks(current_app.config.get("CRM_ALLOWED_NETWORKS", "")))


def _allowed_endpoints():
    return tuple(parse_allowed_endpoints(current_app.config.get("CRM_ALLOWED_ENDPOINTS", "")))


def config_for(integration: CrmIntegration) -> ConnectionConfig | OnlineConfig:
    """The connector config for a saved integration, of its kind (decrypts secrets in memory only)."""
    if integration.is_online:
        return online_config(
            environment_url=integration.environment_url, tenant_id=integration.tenant_id,
            client_id=integration.client_id,
            client_secret=decrypt(integration.client_secret_encrypted) if integration.client_secret_encrypted else "",
            certificate_pem=(decrypt(integration.client_certificate_encrypted)
                             if integration.client_certificate_encrypted else ""),
            cache_key=str(integration.id),
        )
    return connector_config(
        org_url=integration.org_url, odata_url=integration.odata_url, username=integration.username,
        password=decrypt(integration.password_encrypted) if integration.password_encrypted else "",
        domain=integration.domain, organization=integration.organization_name,
    )


def online_config(*, environment_url: str, tenant_id: str, client_id: str, client_secret: str = "",
                  certificate_pem: str = "", cache_key: str = "") -> OnlineConfig:
    """A Dynamics 365 online config with the portal's authority, CA bundle and URL-guard allowances."""
    return OnlineConfig(
        environment_url=environment_url.strip(), tenant_id=tenant_id.strip(), client_id=client_id.strip(),
        client_secret=client_secret, certificate_pem=certificate_pem,
        authority_host=current_app.config.get("CRM_AUTHORITY_HOST") or DEFAULT_AUTHORITY_HOST,
        ca_bundle=current_app.config.get("CRM_CA_BUNDLE") or None,
        allowed_networks=_allowed_networks(), allowed_endpoints=_allowed_endpoints(),
        max_parallel=max(1, int(current_app.config.get("SYNC_PARALLEL_BATCHES", 2))), cache_key=cache_key,
        token_cache=shared_token_cache(),
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
