"""Entity metadata of the stand-in CRM: attributes, types, option sets and state rules."""

from __future__ import annotations

from dataclasses import dataclass, field

# Attribute type names used across the sandbox (a reduced AttributeTypeCode).
STRING = "string"
MEMO = "memo"
INT = "int"
DECIMAL = "decimal"
DOUBLE = "double"
BOOL = "bool"
DATETIME = "datetime"
GUID = "guid"
OPTIONSET = "optionset"
MONEY = "money"
LOOKUP = "lookup"

LEAD_SOURCE_OPTIONS: dict[int, str] = {
    1: "Advertisement",
    2: "Employee Referral",
    3: "External Referral",
    4: "Partner",
    5: "Public Relations",
    6: "Seminar",
    7: "Trade Show",
    8: "Web",
    9: "Word of Mouth",
    10: "Other",
}
# The publisher prefix 10000 of the default publisher gives custom options from 100,000,000.
CUSTOM_OPTION_BASE = 100_000_000
PLATFORM_OPTION_LABEL = "ZiftONE"


@dataclass
class StateModel:
    """Valid statecode → statuscode pairs and labels for one entity."""

    states: dict[int, tuple[str, list[int]]]
    status_labels: dict[int, str]

    def default_status(self, state: int) -> int:
        """First (default) status of a state."""
        return self.states[state][1][0]


@dataclass
class EntityDef:
    """One entity: logical name, key, attribute types and option labels."""

    name: str
    schema_name: str
    primary_id: str
    primary_name: str
    attributes: dict[str, str]
    options: dict[str, dict[int, str]] = field(default_factory=dict)
    state: StateModel | None = None
    set_v2: str = ""
    set_webapi: str = ""
    object_type_code: int = 0
    lookup_targets: dict[str, str] = field(default_factory=dict)


_ADDRESS = {
    f"address1_{part}": STRING
    for part in ("line1", "line2", "line3", "city", "stateorprovince", "postalcode", "country")
}
_AUDIT = {
    "createdon": DATETIME,
    "modifiedon": DATETIME,
    "createdby": LOOKUP,
    "modifiedby": LOOKUP,
    "ownerid": LOOKUP,
}
_AUDIT_TARGETS = {"createdby": "systemuser", "modifiedby": "systemuser", "ownerid": "systemuser"}
_PRIORITY = {0: "Low", 1: "Normal", 2: "High"}

_ACTIVITY_COMMON = {
    "activityid": GUID,
    "activitytypecode": STRING,
    "subject": STRING,
    "description": MEMO,
    "regardingobjectid": LOOKUP,
    "scheduledstart": DATETIME,
    "scheduledend": DATETIME,
    "actualstart": DATETIME,
    "actualend": DATETIME,
    "prioritycode": OPTIONSET,
    "statecode": OPTIONSET,
    "statuscode": OPTIONSET,
    **_AUDIT,
}


def _entity_defs() -> dict[str, EntityDef]:
    """Build the entity table once at import time."""
    defs = [
        EntityDef(
            name="lead",
            schema_name="Lead",
            primary_id="leadid",
            primary_name="fullname",
            object_type_code=4,
            attributes={
                "leadid": GUID,
                "subject": STRING,
                "firstname": STRING,
                "lastname": STRING,
                "fullname": STRING,
                "companyname": STRING,
                "jobtitle": STRING,
                "emailaddress1": STRING,
                "emailaddress2": STRING,
                "emailaddress3": STRING,
                "telephone1": STRING,
                "telephone2": STRING,
                "mobilephone": STRING,
                "websiteurl": STRING,
                **_ADDRESS,
                "description": MEMO,
                "leadsourcecode": OPTIONSET,
                "campaignid": LOOKUP,
                "donotemail": BOOL,
                "donotbulkemail": BOOL,
                "donotphone": BOOL,
                "qualifyingopportunityid": LOOKUP,
                "parentcontactid": LOOKUP,
                "parentaccountid": LOOKUP,
                "statecode": OPTIONSET,
                "statuscode": OPTIONSET,
                **_AUDIT,
            },
            options={"leadsourcecode": dict(LEAD_SOURCE_OPTIONS)},
            state=StateModel(
                states={0: ("Open", [1, 2]), 1: ("Qualified", [3]), 2: ("Disqualified", [4, 5, 6, 7])},
                status_labels={
                    1: "New",
                    2: "Contacted",
                    3: "Qualified",
                    4: "Lost",
                    5: "Cannot Contact",
                    6: "No Longer Interested",
                    7: "Canceled",
                },
            ),
            lookup_targets={
                "campaignid": "campaign",
                "qualifyingopportunityid": "opportunity",
                "parentcontactid": "contact",
                "parentaccountid": "account",
            },
        ),
        EntityDef(
            name="contact",
            schema_name="Contact",
            primary_id="contactid",
            primary_name="fullname",
            object_type_code=2,
            attributes={
                "contactid": GUID,
                "firstname": STRING,
                "lastname": STRING,
                "fullname": STRING,
                "jobtitle": STRING,
                "emailaddress1": STRING,
                "emailaddress2": STRING,
                "emailaddress3": STRING,
                "telephone1": STRING,
                "telephone2": STRING,
                "mobilephone": STRING,
                "websiteurl": STRING,
                **_ADDRESS,
                "description": MEMO,
                "parentcustomerid": LOOKUP,
                "originatingleadid": LOOKUP,
                "donotemail": BOOL,
                "donotbulkemail": BOOL,
                "statecode": OPTIONSET,
                "statuscode": OPTIONSET,
                **_AUDIT,
            },
            state=StateModel(
                states={0: ("Active", [1]), 1: ("Inactive", [2])}, status_labels={1: "Active", 2: "Inactive"}
            ),
            lookup_targets={"originatingleadid": "lead", "parentcustomerid": "account"},
        ),
        EntityDef(
            name="account",
            schema_name="Account",
            primary_id="accountid",
            primary_name="name",
            object_type_code=1,
            attributes={
                "accountid": GUID,
                "name": STRING,
                "emailaddress1": STRING,
                "telephone1": STRING,
                "websiteurl": STRING,
                **_ADDRESS,
                "description": MEMO,
                "primarycontactid": LOOKUP,
                "statecode": OPTIONSET,
                "statuscode": OPTIONSET,
                **_AUDIT,
            },
            state=StateModel(
                states={0: ("Active", [1]), 1: ("Inactive", [2])}, status_labels={1: "Active", 2: "Inactive"}
            ),
            lookup_targets={"primarycontactid": "contact"},
        ),
        EntityDef(
            name="list",
            schema_name="List",
            primary_id="listid",
            primary_name="listname",
            object_type_code=4300,
            attributes={
                "listid": GUID,
                "listname": STRING,
                "type": BOOL,
                "createdfromcode": OPTIONSET,
                "query": MEMO,
                "membercount": INT,
                "membertype": INT,
                "purpose": MEMO,
                "source": STRING,
                "description": MEMO,
                "cost": MONEY,
                "lockstatus": BOOL,
                "lastusedon": DATETIME,
                "statecode": OPTIONSET,
                "statuscode": OPTIONSET,
                **_AUDIT,
            },
            options={"createdfromcode": {1: "Account", 2: "Contact", 4: "Lead"}},
            state=StateModel(
                states={0: ("Active", [0]), 1: ("Inactive", [1])}, status_labels={0: "Active", 1: "Inactive"}
            ),
        ),
        EntityDef(
            name="listmember",
            schema_name="ListMember",
            primary_id="listmemberid",
            primary_name="listmemberid",
            object_type_code=4301,
            attributes={
                "listmemberid": GUID,
                "listid": LOOKUP,
                "entityid": LOOKUP,
                "entitytype": STRING,
                "createdon": DATETIME,
                "modifiedon": DATETIME,
            },
            lookup_targets={"listid": "list"},
        ),
        EntityDef(
            name="annotation",
            schema_name="Annotation",
            primary_id="annotationid",
            primary_name="subject",
            object_type_code=5,
            attributes={
                "annotationid": GUID,
                "objectid": LOOKUP,
                "objecttypecode": STRING,
                "subject": STRING,
                "notetext": MEMO,
                "isdocument": BOOL,
                "filename": STRING,
                "documentbody": MEMO,
                "mimetype": STRING,
                "filesize": INT,
                **_AUDIT,
            },
        ),
        EntityDef(
            name="task",
            schema_name="Task",
            primary_id="activityid",
            primary_name="subject",
            object_type_code=4212,
            attributes={**_ACTIVITY_COMMON, "percentcomplete": INT, "actualdurationminutes": INT},
            options={"prioritycode": dict(_PRIORITY)},
            state=StateModel(
                states={0: ("Open", [2, 3, 4, 7]), 1: ("Completed", [5]), 2: ("Canceled", [6])},
                status_labels={
                    2: "Not Started",
                    3: "In Progress",
                    4: "Waiting on someone else",
                    5: "Completed",
                    6: "Canceled",
                    7: "Deferred",
                },
            ),
        ),
        EntityDef(
            name="phonecall",
            schema_name="PhoneCall",
            primary_id="activityid",
            primary_name="subject",
            object_type_code=4210,
            attributes={**_ACTIVITY_COMMON, "phonenumber": STRING, "directioncode": BOOL},
            options={"prioritycode": dict(_PRIORITY)},
            state=StateModel(
                states={0: ("Open", [1]), 1: ("Completed", [2, 4]), 2: ("Canceled", [3])},
                status_labels={1: "Open", 2: "Made", 3: "Canceled", 4: "Received"},
            ),
        ),
        EntityDef(
            name="activitypointer",
            schema_name="ActivityPointer",
            primary_id="activityid",
            primary_name="subject",
            object_type_code=4200,
            attributes=dict(_ACTIVITY_COMMON),
            options={"prioritycode": dict(_PRIORITY)},
            state=StateModel(
                states={0: ("Open", [1, 2, 3, 4, 7]), 1: ("Completed", [2, 4, 5]), 2: ("Canceled", [3, 6])},
                status_labels={},
            ),
        ),
        EntityDef(
            name="campaign",
            schema_name="Campaign",
            primary_id="campaignid",
            primary_name="name",
            object_type_code=4400,
            attributes={
                "campaignid": GUID,
                "name": STRING,
                "codename": STRING,
                "typecode": OPTIONSET,
                "budgetedcost": MONEY,
                "expectedrevenue": MONEY,
                "othercost": MONEY,
                "totalactualcost": MONEY,
                "proposedstart": DATETIME,
                "proposedend": DATETIME,
                "actualstart": DATETIME,
                "actualend": DATETIME,
                "description": MEMO,
                "objective": MEMO,
                "promotioncodename": STRING,
                "expectedresponse": INT,
                "istemplate": BOOL,
                "statecode": OPTIONSET,
                "statuscode": OPTIONSET,
                **_AUDIT,
            },
            options={"typecode": {1: "Advertisement", 2: "Direct Marketing", 3: "Event", 4: "Co-branding", 5: "Other"}},
            state=StateModel(
                states={0: ("Active", [0, 1, 2, 3, 4, 5]), 1: ("Inactive", [6])},
                status_labels={
                    0: "Proposed",
                    1: "Ready To Launch",
                    2: "Launched",
                    3: "Completed",
                    4: "Canceled",
                    5: "Suspended",
                    6: "Inactive",
                },
            ),
        ),
        EntityDef(
            name="opportunity",
            schema_name="Opportunity",
            primary_id="opportunityid",
            primary_name="name",
            object_type_code=3,
            attributes={
                "opportunityid": GUID,
                "name": STRING,
                "customerid": LOOKUP,
                "parentaccountid": LOOKUP,
                "parentcontactid": LOOKUP,
                "originatingleadid": LOOKUP,
                "campaignid": LOOKUP,
                "estimatedvalue": MONEY,
                "actualvalue": MONEY,
                "estimatedclosedate": DATETIME,
                "actualclosedate": DATETIME,
                "closeprobability": INT,
                "description": MEMO,
                "statecode": OPTIONSET,
                "statuscode": OPTIONSET,
                **_AUDIT,
            },
            state=StateModel(
                states={0: ("Open", [1, 2]), 1: ("Won", [3]), 2: ("Lost", [4, 5])},
                status_labels={1: "In Progress", 2: "On Hold", 3: "Won", 4: "Canceled", 5: "Out-Sold"},
            ),
            lookup_targets={
                "parentaccountid": "account",
                "parentcontactid": "contact",
                "originatingleadid": "lead",
                "campaignid": "campaign",
            },
        ),
        EntityDef(
            name="systemuser",
            schema_name="SystemUser",
            primary_id="systemuserid",
            primary_name="fullname",
            object_type_code=8,
            attributes={
                "systemuserid": GUID,
                "domainname": STRING,
                "firstname": STRING,
                "lastname": STRING,
                "fullname": STRING,
                "internalemailaddress": STRING,
                "businessunitid": LOOKUP,
                "isdisabled": BOOL,
                "createdon": DATETIME,
                "modifiedon": DATETIME,
            },
            lookup_targets={"businessunitid": "businessunit"},
        ),
    ]
    for d in defs:
        d.lookup_targets = {**_AUDIT_TARGETS, **d.lookup_targets}
        d.set_v2 = d.schema_name + "Set"
        d.set_webapi = {"opportunity": "opportunities", "activitypointer": "activitypointers"}.get(d.name, d.name + "s")
    return {d.name: d for d in defs}


ENTITIES: dict[str, EntityDef] = _entity_defs()

# What notes and activities may be regarding among the sandbox's entities.
REGARDING_TARGETS = ("account", "contact", "lead", "opportunity", "campaign")
CUSTOMER_TARGETS = ("account", "contact")


def navigation_properties(ent: EntityDef) -> dict[str, tuple[str, frozenset[str]]]:
    """The single-valued navigation properties of an entity, as Dataverse's metadata names them.

    Each maps to (lookup attribute, entities it may point at). A polymorphic lookup has one navigation property per
    target: ``objectid_lead`` on a note, ``regardingobjectid_lead_task`` on a task (the activity's name is part of
    it), ``customerid_account``; the owner is one property, ``ownerid``, bound to a user or a team.
    """
    out: dict[str, tuple[str, frozenset[str]]] = {}
    for attr, kind in ent.attributes.items():
        if kind != LOOKUP:
            continue
        if attr == "regardingobjectid":
            out.update({f"regardingobjectid_{t}_{ent.name}": (attr, frozenset({t})) for t in REGARDING_TARGETS})
        elif attr == "objectid":
            out.update({f"objectid_{t}": (attr, frozenset({t})) for t in REGARDING_TARGETS})
        elif attr in ("customerid", "parentcustomerid"):
            out.update({f"{attr}_{t}": (attr, frozenset({t})) for t in CUSTOMER_TARGETS})
        elif attr == "ownerid":
            out[attr] = (attr, frozenset({"systemuser", "team"}))
        elif attr in ent.lookup_targets:
            out[attr] = (attr, frozenset({ent.lookup_targets[attr]}))
    return out
# Activities stored as their own entity but readable through activitypointer.
ACTIVITY_ENTITIES = ("task", "phonecall")
# Entities whose full name is derived from first and last name.
NAMED_PERSONS = ("lead", "contact", "systemuser")

# SchemaName spellings that do not follow the simple "capitalise word parts" rule (OData v2).
_SCHEMA_OVERRIDES = {
    "emailaddress1": "EMailAddress1",
    "emailaddress2": "EMailAddress2",
    "emailaddress3": "EMailAddress3",
    "internalemailaddress": "InternalEMailAddress",
    "leadid": "LeadId",
    "contactid": "ContactId",
    "accountid": "AccountId",
    "listid": "ListId",
    "listmemberid": "ListMemberId",
    "campaignid": "CampaignId",
    "opportunityid": "OpportunityId",
    "activityid": "ActivityId",
    "annotationid": "AnnotationId",
    "systemuserid": "SystemUserId",
    "firstname": "FirstName",
    "lastname": "LastName",
    "fullname": "FullName",
    "companyname": "CompanyName",
    "jobtitle": "JobTitle",
    "mobilephone": "MobilePhone",
    "websiteurl": "WebSiteUrl",
    "leadsourcecode": "LeadSourceCode",
    "statecode": "StateCode",
    "statuscode": "StatusCode",
    "createdon": "CreatedOn",
    "modifiedon": "ModifiedOn",
    "createdby": "CreatedBy",
    "modifiedby": "ModifiedBy",
    "ownerid": "OwnerId",
    "donotemail": "DoNotEMail",
    "donotbulkemail": "DoNotBulkEMail",
    "donotphone": "DoNotPhone",
    "listname": "ListName",
    "createdfromcode": "CreatedFromCode",
    "type": "Type",
    "query": "Query",
    "membercount": "MemberCount",
    "entityid": "EntityId",
    "entitytype": "EntityType",
    "originatingleadid": "OriginatingLeadId",
    "parentcontactid": "ParentContactId",
    "parentaccountid": "ParentAccountId",
    "parentcustomerid": "ParentCustomerId",
    "customerid": "CustomerId",
    "regardingobjectid": "RegardingObjectId",
    "activitytypecode": "ActivityTypeCode",
    "scheduledend": "ScheduledEnd",
    "scheduledstart": "ScheduledStart",
    "actualend": "ActualEnd",
    "actualstart": "ActualStart",
    "prioritycode": "PriorityCode",
    "subject": "Subject",
    "description": "Description",
    "name": "Name",
    "estimatedvalue": "EstimatedValue",
    "actualvalue": "ActualValue",
    "typecode": "TypeCode",
    "codename": "CodeName",
    "objectid": "ObjectId",
    "notetext": "NoteText",
    "telephone1": "Telephone1",
    "telephone2": "Telephone2",
    "domainname": "DomainName",
}


def schema_name(attribute: str) -> str:
    """SchemaName (OData v2 property) of a logical attribute name."""
    if attribute in _SCHEMA_OVERRIDES:
        return _SCHEMA_OVERRIDES[attribute]
    # address1_city → Address1_City, the CRM convention for composite field parts.
    return "_".join(part[:1].upper() + part[1:] for part in attribute.split("_"))


def option_label(entity: EntityDef, attribute: str, value: int, extra: dict[int, str] | None = None) -> str | None:
    """Label of an option-set value, or None when the value is unknown."""
    if attribute == "statecode" and entity.state:
        state = entity.state.states.get(value)
        return state[0] if state else None
    if attribute == "statuscode" and entity.state:
        return entity.state.status_labels.get(value)
    labels = dict(entity.options.get(attribute, {}))
    if extra:
        labels.update(extra)
    return labels.get(value)


_PERSON_LENGTHS = {
    "firstname": 50, "lastname": 50, "fullname": 160, "jobtitle": 100, "emailaddress1": 100, "emailaddress2": 100,
    "emailaddress3": 100, "telephone1": 50, "telephone2": 50, "websiteurl": 200, "address1_line1": 250,
    "address1_line2": 250, "address1_line3": 250, "address1_city": 80, "address1_stateorprovince": 50,
    "address1_postalcode": 20, "address1_country": 80, "description": 2000,
}
# MaxLength of text attributes as an out-of-the-box organization has them (customized ones differ); the server
# refuses a longer value. Text attributes not listed here are not limited by the sandbox.
MAX_LENGTHS: dict[str, dict[str, int]] = {
    "lead": {**_PERSON_LENGTHS, "subject": 300, "companyname": 100, "mobilephone": 20},
    "contact": {**_PERSON_LENGTHS, "mobilephone": 50},
    "annotation": {"subject": 500, "notetext": 100000},
    "campaign": {"name": 128, "codename": 32, "promotioncodename": 128},
    "task": {"subject": 200},
    "phonecall": {"subject": 200},
}


def max_length(entity: str, attribute: str) -> int | None:
    """The MaxLength of a text attribute, or None when the sandbox does not limit it."""
    return MAX_LENGTHS.get(entity, {}).get(attribute)
