"""Flask-WTF forms: sign-in, the On/Off switch, and one form per settings category (G1–G4)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    EmailField,
    HiddenField,
    IntegerField,
    PasswordField,
    RadioField,
    SelectChoice,
    SelectField,
    SelectMultipleField,
    StringField,
    URLField,
    widgets,
)
from wtforms.validators import (
    DataRequired,
    InputRequired,
    Length,
    NumberRange,
    Optional,
    StopValidation,
    ValidationError,
)

from . import catalog
from .validation import email_problem, text_problem
from .widgets import PreparedMeta


def _no_control_characters(form: FlaskForm, field: Any) -> None:
    """The one text rule (portal.validation), on every field that holds text."""
    multiline = isinstance(field.widget, widgets.TextArea)
    values = field.data if isinstance(field.data, list) else [field.data]
    for value in values:
        if isinstance(value, str):
            problem = text_problem(value, multiline=multiline)
            if problem:
                raise StopValidation(f"This field {problem}")


class PortalForm(FlaskForm):
    """A form whose every text field is refused with a message when it holds control characters."""

    class Meta(PreparedMeta):
        """Inputs drawn from attributes prepared once (portal.widgets); CSRF as Flask-WTF sets it."""

    def validate(self, extra_validators: dict | None = None) -> bool:
        """Validate as WTForms does, with the text rule added to each field."""
        extra = {name: list(validators) for name, validators in (extra_validators or {}).items()}
        for name in self._fields:
            extra.setdefault(name, []).insert(0, _no_control_characters)
        return super().validate(extra)


class EmailAddress:
    """The portal's one email rule (portal.validation.email_problem) as a WTForms validator."""

    def __init__(self, message: str | None = None):
        self.message = message

    def __call__(self, form: FlaskForm, field: Any) -> None:
        problem = email_problem(field.data or "")
        if problem:
            raise ValidationError(self.message or problem)


class LoginForm(PortalForm):
    """Email and password."""

    email = EmailField("Email", validators=[DataRequired(), EmailAddress()])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=500)])
    next = HiddenField()


class ToggleForm(PortalForm):
    """The On/Off switch: a CSRF-protected form that works with and without htmx."""

    state = HiddenField(validators=[DataRequired()])


class CsrfOnlyForm(PortalForm):
    """A button-only action that still carries the CSRF token."""


# --- Edit Settings: one form per category (G1–G4) ---------------------------------------------------------

WEB_SUFFIX = "/web"
MISSING_WEB = ("The Organization Web Service URL must end with /web: copy it from Settings > Customizations > "
               "Developer Resources and append /web.")
# The most characters a CRM URL field takes (its column's size).
URL_MAX_LENGTH = 500


def choices(pairs) -> list[SelectChoice]:
    """WTForms choices from (value, label) pairs."""
    return [SelectChoice(value, label) for value, label in pairs]


def with_web_appended(url: str) -> str:
    """The URL with /web appended to its path (a query or fragment stays after it)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + WEB_SUFFIX))


def url_problem(url: str, *, must_end_with_web: bool) -> str | None:
    """What is wrong with the shape of a CRM URL (not its address), or None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is what raises for a bad one
        parts.hostname  # noqa: B018 - and the host for an unclosed [IPv6 bracket
    except ValueError as exc:
        return f"The URL is malformed ({exc}): check the server name and the port."
    if parts.scheme not in ("http", "https"):
        return "The URL must start with http:// or https://."
    if not parts.hostname:
        return "The URL needs a server name, e.g. https://crm.example.com/Org/…"
    if parts.username or parts.password:
        return "Leave the user name and password out of the URL: they have their own fields."
    if must_end_with_web and not parts.path.rstrip("/").lower().endswith(WEB_SUFFIX):
        return MISSING_WEB
    return None


class GeneralForm(PortalForm):
    """G1: the supplier and how new leads are recorded."""

    supplier_id = SelectField("Supplier", coerce=int, validators=[InputRequired(message="Choose a supplier.")])
    record_leads_as = RadioField(
        "Record new leads in the CRM as", choices=choices([("lead", "Leads"), ("contact", "Contacts")]),
        validators=[InputRequired(message="Choose Leads or Contacts.")],
    )


CONNECTION_KINDS = [("onprem", "On-premises (Windows sign-in)"), ("online", "Dynamics 365 online")]
_GUID_RE = re.compile(r"^\{?[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\}?$")
_TENANT_DOMAIN_RE = re.compile(r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
_HOST_RE = re.compile(r"^([a-z0-9-]+(\.[a-z0-9-]+)*\.?|[0-9a-f:.]+)$")


class ConnectionForm(PortalForm):
    """G2: CRM credentials and URLs of either kind. Passwords, secrets and certificates are write-only.

    Only the chosen kind's fields are required and saved; the other kind keeps what it had.
    """

    connection_kind = RadioField("Connection kind", choices=choices(CONNECTION_KINDS), default="onprem",
                                 validators=[InputRequired(message="Choose how the portal connects.")])
    username = StringField("CRM username", validators=[Length(max=200)])
    password = PasswordField("CRM password", validators=[Length(max=500)])
    org_url = URLField("Organization Web Service URL", validators=[Length(max=URL_MAX_LENGTH)],
                       description="Developer Resources > Organization Service, with /web appended, e.g. "
                                   "https://crm.example.com/Org/XRMServices/2011/Organization.svc/web")
    odata_url = URLField("OData Service URL", validators=[Optional(), Length(max=URL_MAX_LENGTH)],
                         description="Developer Resources > OData endpoint (…/XRMServices/2011/OrganizationData.svc/) "
                                     "or, from CRM 2016, the Web API (…/api/data/v8.2/).")
    domain = StringField("Domain (NTLM)", validators=[Optional(), Length(max=200)])
    organization_name = StringField("Organization name", validators=[Optional(), Length(max=200)])
    environment_url = URLField("Environment URL", validators=[Length(max=500)])
    tenant_id = StringField("Tenant id", validators=[Length(max=200)])
    client_id = StringField("Application (client) id", validators=[Length(max=100)])
    client_secret = PasswordField("Client secret", validators=[Length(max=1000)])
    client_certificate = StringField("Certificate (instead of a secret)", widget=widgets.TextArea(),
                                     validators=[Length(max=20000)])

    def __init__(self, *args, has_password: bool = False, has_client_credential: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.has_password = has_password
        self.has_client_credential = has_client_credential

    @property
    def online(self) -> bool:
        """True when the chosen kind is Dynamics 365 online."""
        return self.connection_kind.data == "online"

    def validate_username(self, field) -> None:
        if self.online:
            return
        if not (field.data or "").strip():
            raise ValidationError("Enter the CRM user name.")
        if field.data.count("\\") > 1:
            raise ValidationError("Write the user as DOMAIN\\user or put the domain in its own field.")

    def validate_org_url(self, field) -> None:
        if self.online:
            return
        if not (field.data or "").strip():
            raise ValidationError("Enter the Organization Web Service URL.")
        problem = url_problem(field.data.strip(), must_end_with_web=True)
        if problem:
            raise ValidationError(problem)

    def validate_odata_url(self, field) -> None:
        if not self.online and field.data and field.data.strip():
            problem = url_problem(field.data.strip(), must_end_with_web=False)
            if problem:
                raise ValidationError(problem)

    def validate_password(self, field) -> None:
        if not self.online and not self.has_password and not field.data:
            raise ValidationError("Enter the CRM password.")

    def validate_environment_url(self, field) -> None:
        if not self.online:
            return
        value = (field.data or "").strip()
        if not value:
            raise ValidationError("Enter the environment URL, e.g. https://contoso.crm4.dynamics.com.")
        if not value.isprintable() or any(ch.isspace() for ch in value):
            raise ValidationError("The environment URL holds spaces or invisible characters: type it again.")
        try:
            parts = urlsplit(value)
        except ValueError as exc:
            raise ValidationError("The environment URL cannot be read: type it as https://<org>.crm<N>.dynamics.com.") \
                from exc
        if parts.scheme != "https" or not parts.hostname:
            raise ValidationError("The environment URL starts with https://, e.g. https://contoso.crm4.dynamics.com.")
        try:
            port = parts.port
        except ValueError as exc:
            port = 0
            cause: Exception | None = exc
        else:
            cause = None
        if port == 0:  # Python reads "…:0" as port 0, which no server listens on
            raise ValidationError("The environment URL has a port that is not a number from 1 to 65535.") from cause
        if not _HOST_RE.match(parts.hostname):
            raise ValidationError("The environment URL's host name is not valid, e.g. contoso.crm4.dynamics.com.")
        if parts.username or parts.password or parts.query or parts.path.strip("/") not in ("", "api/data/v9.2"):
            raise ValidationError("Enter the environment URL alone, without a path: https://<org>.crm<N>.dynamics.com.")

    def validate_tenant_id(self, field) -> None:
        value = (field.data or "").strip()
        if self.online and not (_GUID_RE.match(value) or _TENANT_DOMAIN_RE.match(value)):
            raise ValidationError("Enter the Directory (tenant) ID, a GUID such as "
                                  "72f988bf-86f1-41af-91ab-2d7cd011db47 (or the tenant's domain, "
                                  "contoso.onmicrosoft.com).")

    def validate_client_id(self, field) -> None:
        if self.online and not _GUID_RE.match((field.data or "").strip()):
            raise ValidationError("Enter the Application (client) ID, a GUID such as "
                                  "00001111-aaaa-2222-bbbb-3333cccc4444.")

    def validate_client_secret(self, field) -> None:
        if self.online and not field.data and not self.client_certificate.data and not self.has_client_credential:
            raise ValidationError("Enter the client secret's value, or paste a certificate below.")

    def validate_client_certificate(self, field) -> None:
        value = (field.data or "").strip()
        if not self.online or not value:
            return
        if "PRIVATE KEY-----" not in value or "BEGIN CERTIFICATE-----" not in value:
            raise ValidationError("Paste the PEM with both the private key and the certificate "
                                  "(-----BEGIN PRIVATE KEY----- … -----BEGIN CERTIFICATE----- …).")
        from cryptography import x509

        try:
            x509.load_pem_x509_certificate(value[value.index("-----BEGIN CERTIFICATE-----"):].encode())
        except ValueError as exc:
            raise ValidationError("The certificate in the PEM cannot be read.") from exc


class UsageForm(PortalForm):
    """G3: the two usage profiles with their advanced options."""

    marketing_automation = BooleanField("Marketing Automation")
    ma_pull_contacts = BooleanField("Pull Contacts")
    ma_sync_leads = BooleanField("Synchronize Marketing Automation Leads")
    ma_score_threshold = IntegerField(
        "Minimum lead score threshold",
        validators=[InputRequired(message="Enter a whole number from 0 to 100."),
                    NumberRange(min=0, max=100, message="Enter a whole number from 0 to 100.")],
    )
    ma_allow_field_updates = BooleanField("Allow lead field updates in the CRM")
    ma_pull_opportunities = BooleanField("Opportunities originating from Marketing Activity leads")
    lead_distribution = BooleanField("Lead Distribution")
    ld_sync_supplier_leads = BooleanField("Synchronize Supplier Leads")
    ld_allow_field_updates = BooleanField("Allow lead field updates in the CRM")
    ld_pull_opportunities = BooleanField("Opportunities with a contact matching a lead by email")
    ld_custom_fields_in_notes = BooleanField("Send custom fields into the Notes")

    def __init__(self, *args, records_as_contacts: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.records_as_contacts = records_as_contacts
        self.ma_score_threshold.widget.input_type = "number"

    def validate_ma_pull_contacts(self, field) -> None:
        if field.data and self.records_as_contacts:
            from .lifecycle import PULL_CONTACTS_WITH_CONTACTS

            raise ValidationError(PULL_CONTACTS_WITH_CONTACTS)


class MultiCheckboxField(SelectMultipleField):
    """Checkboxes for a multiple choice."""

    widget = widgets.ListWidget(prefix_label=False)
    option_widget = widgets.CheckboxInput()


class AdvancedForm(PortalForm):
    """G4: lead event types and campaigns."""

    event_types = MultiCheckboxField("Lead Event Types", choices=choices(catalog.EVENT_TYPES))
    create_campaigns = BooleanField("Create Campaigns in CRM")
    # Not required: with campaigns off the field is not shown and the saved level is kept for later.
    campaign_data_level = RadioField("Campaign Send Data Level", choices=choices(catalog.CAMPAIGN_DATA_LEVELS))
    cut_long_values = BooleanField("Cut values too long for the CRM")


# --- API tokens and leads --------------------------------------------------------------------------------------


class TokenForm(PortalForm):
    """A new API token: a name saying what uses it."""

    name = StringField("Token name", validators=[DataRequired(message="Name the token after what will use it."),
                                                 Length(max=100)])


class DistributeForm(PortalForm):
    """A lead a supplier distributes to one of its partners (S1, S4)."""

    partner_id = SelectField("Partner", coerce=int, validators=[InputRequired(message="Choose a partner.")])
    email = EmailField("Email", validators=[DataRequired(message="A lead needs an email address."),
                                            EmailAddress()])
    first_name = StringField("First name", validators=[Optional(), Length(max=100)])
    last_name = StringField("Last name", validators=[Optional(), Length(max=100)])
    company = StringField("Company", validators=[Optional(), Length(max=200)])
    job_title = StringField("Job title", validators=[Optional(), Length(max=200)])
    phone = StringField("Phone", validators=[Optional(), Length(max=60)])
    mobile_phone = StringField("Mobile phone", validators=[Optional(), Length(max=60)])
    website = StringField("Website", validators=[Optional(), Length(max=300)])
    address_line1 = StringField("Address", validators=[Optional(), Length(max=250)])
    address_line2 = StringField("Address line 2", validators=[Optional(), Length(max=250)])
    city = StringField("City", validators=[Optional(), Length(max=100)])
    state = StringField("State or province", validators=[Optional(), Length(max=100)])
    postal_code = StringField("Postal code", validators=[Optional(), Length(max=40)])
    country = StringField("Country", validators=[Optional(), Length(max=100)])
    description = StringField("Description", validators=[Optional(), Length(max=4000)], widget=widgets.TextArea())
    score = IntegerField("Score", validators=[Optional(), NumberRange(min=0, max=100, message="From 0 to 100.")])


def _printable(form, field) -> None:
    """Refuse control characters (a NUL would not even reach PostgreSQL)."""
    if field.data and any(ord(ch) < 32 or 0xD800 <= ord(ch) <= 0xDFFF for ch in field.data):
        raise ValidationError("Use letters, digits and punctuation only.")


class ContactListForm(FlaskForm):
    """A contact list made from one of the CRM's marketing lists (read live), named, kept in sync or not."""

    crm_list_id = SelectField("CRM marketing list", validate_choice=False,
                              validators=[DataRequired(message="Choose one of your CRM's marketing lists.")])
    name = StringField("Contact list name", validators=[DataRequired(message="Name the contact list."),
                                                        Length(max=200), _printable])
    # Named after the chosen list's members ("with CRM Leads", "with CRM Contacts") by the view and the page.
    keep_in_sync = BooleanField("Keep list in sync with the CRM list", default=True)
