"""RetrieveAttribute answers: PicklistAttributeMetadata in the element order of a real server."""

from __future__ import annotations

import uuid

from . import schema as s
from .soap import MD, MD13, esc

# Stable ids so repeated calls return the same MetadataId, like a real organization.
_NS = uuid.UUID("7c4f3c4e-4d0b-4a47-9a55-6a8f0c0d7e11")


def _label_body(label: str | None) -> str:
    """LocalizedLabels + UserLocalizedLabel (b = xrm contracts, d = metadata)."""
    if label is None:
        return '<b:LocalizedLabels/><b:UserLocalizedLabel i:nil="true"/>'
    one = (
        '<d:MetadataId i:nil="true"/><d:HasChanged i:nil="true"/><b:IsManaged>true</b:IsManaged>'
        f"<b:Label>{esc(label)}</b:Label><b:LanguageCode>1033</b:LanguageCode>"
    )
    return (
        f"<b:LocalizedLabels><b:LocalizedLabel>{one}</b:LocalizedLabel></b:LocalizedLabels>"
        f"<b:UserLocalizedLabel>{one}</b:UserLocalizedLabel>"
    )


def _managed(name: str, logical: str, value: str, changeable: bool = False) -> str:
    return (
        f"<d:{name}><b:CanBeChanged>{'true' if changeable else 'false'}</b:CanBeChanged>"
        f"<b:ManagedPropertyLogicalName>{logical}</b:ManagedPropertyLogicalName>"
        f"<b:Value>{value}</b:Value></d:{name}>"
    )


def _option(value: int, label: str, custom: bool) -> str:
    return (
        '<d:OptionMetadata><d:MetadataId i:nil="true"/><d:HasChanged i:nil="true"/>'
        f"<d:Description>{_label_body(None)}</d:Description>"
        f"<d:IsManaged>{'false' if custom else 'true'}</d:IsManaged>"
        f"<d:Label>{_label_body(label)}</d:Label><d:Value>{value}</d:Value></d:OptionMetadata>"
    )


def picklist_metadata(entity: s.EntityDef, attribute: str, options: dict[int, str], custom: set[int]) -> str:
    """A kv:value element holding md:PicklistAttributeMetadata for entity.attribute."""
    display = {"leadsourcecode": "Lead Source"}.get(attribute, s.schema_name(attribute))
    attr_id = uuid.uuid5(_NS, f"{entity.name}.{attribute}")
    set_id = uuid.uuid5(_NS, f"{entity.name}.{attribute}.optionset")
    opts = "".join(_option(v, lbl, v in custom) for v, lbl in sorted(options.items()))
    return (
        f'<c:value i:type="d:PicklistAttributeMetadata" xmlns:d="{MD}">'
        f'<d:MetadataId>{attr_id}</d:MetadataId><d:HasChanged i:nil="true"/><d:AttributeOf i:nil="true"/>'
        "<d:AttributeType>Picklist</d:AttributeType>"
        "<d:CanBeSecuredForCreate>false</d:CanBeSecuredForCreate>"
        "<d:CanBeSecuredForRead>false</d:CanBeSecuredForRead>"
        "<d:CanBeSecuredForUpdate>false</d:CanBeSecuredForUpdate>"
        + _managed("CanModifyAdditionalSettings", "canmodifyadditionalsettings", "true")
        + '<d:ColumnNumber>9</d:ColumnNumber><d:DeprecatedVersion i:nil="true"/>'
        f"<d:Description>{_label_body('Source of the lead.')}</d:Description>"
        f"<d:DisplayName>{_label_body(display)}</d:DisplayName>"
        f"<d:EntityLogicalName>{esc(entity.name)}</d:EntityLogicalName>"
        + _managed("IsAuditEnabled", "canmodifyauditsettings", "true", True)
        + "<d:IsCustomAttribute>false</d:IsCustomAttribute>"
        + _managed("IsCustomizable", "iscustomizable", "true")
        + "<d:IsManaged>true</d:IsManaged><d:IsPrimaryId>false</d:IsPrimaryId>"
        "<d:IsPrimaryName>false</d:IsPrimaryName>"
        + _managed("IsRenameable", "isrenameable", "true")
        + "<d:IsSecured>false</d:IsSecured>"
        + _managed("IsValidForAdvancedFind", "canmodifysearchsettings", "true", True)
        + "<d:IsValidForCreate>true</d:IsValidForCreate><d:IsValidForRead>true</d:IsValidForRead>"
        '<d:IsValidForUpdate>true</d:IsValidForUpdate><d:LinkedAttributeId i:nil="true"/>'
        f"<d:LogicalName>{esc(attribute)}</d:LogicalName>"
        + _managed("RequiredLevel", "canmodifyrequirementlevelsettings", "None", True)
        + f"<d:SchemaName>{esc(s.schema_name(attribute))}</d:SchemaName>"
        f'<d:AttributeTypeName xmlns:e="{MD13}"><e:Value>PicklistType</e:Value></d:AttributeTypeName>'
        "<d:IntroducedVersion>5.0.0.0</d:IntroducedVersion><d:DefaultFormValue>-1</d:DefaultFormValue>"
        f'<d:OptionSet><d:MetadataId>{set_id}</d:MetadataId><d:HasChanged i:nil="true"/>'
        f"<d:Description>{_label_body(display)}</d:Description>"
        f"<d:DisplayName>{_label_body(display)}</d:DisplayName>"
        "<d:IsCustomOptionSet>false</d:IsCustomOptionSet>"
        + _managed("IsCustomizable", "iscustomizable", "true")
        + "<d:IsGlobal>false</d:IsGlobal><d:IsManaged>true</d:IsManaged>"
        f"<d:Name>{esc(entity.name)}_{esc(attribute)}</d:Name><d:OptionSetType>Picklist</d:OptionSetType>"
        "<d:IntroducedVersion>5.0.0.0</d:IntroducedVersion>"
        f"<d:Options>{opts}</d:Options></d:OptionSet></c:value>"
    )


def _string_attribute(entity: s.EntityDef, attribute: str, kind: str, max_length: int) -> str:
    memo = kind == s.MEMO
    type_name = "MemoAttributeMetadata" if memo else "StringAttributeMetadata"
    attr_id = uuid.uuid5(_NS, f"{entity.name}.{attribute}")
    return (
        f'<d:AttributeMetadata i:type="d:{type_name}"><d:MetadataId>{attr_id}</d:MetadataId>'
        '<d:HasChanged i:nil="true"/><d:AttributeOf i:nil="true"/>'
        f"<d:AttributeType>{'Memo' if memo else 'String'}</d:AttributeType>"
        f"<d:EntityLogicalName>{esc(entity.name)}</d:EntityLogicalName>"
        "<d:IsCustomAttribute>false</d:IsCustomAttribute>"
        f"<d:LogicalName>{esc(attribute)}</d:LogicalName>"
        f"<d:SchemaName>{esc(s.schema_name(attribute))}</d:SchemaName>"
        f'<d:AttributeTypeName xmlns:e="{MD13}"><e:Value>{"MemoType" if memo else "StringType"}</e:Value>'
        "</d:AttributeTypeName><d:IntroducedVersion>5.0.0.0</d:IntroducedVersion>"
        f"<d:Format>{'TextArea' if memo else 'Text'}</d:Format><d:ImeMode>Auto</d:ImeMode>"
        f"<d:MaxLength>{max_length}</d:MaxLength></d:AttributeMetadata>"
    )


def entity_metadata(entity: s.EntityDef) -> str:
    """A kv:value element holding md:EntityMetadata with its text attributes (RetrieveEntity, filter Attributes)."""
    attrs = "".join(
        _string_attribute(entity, name, kind, s.max_length(entity.name, name) or (2000 if kind == s.MEMO else 4000))
        for name, kind in sorted(entity.attributes.items())
        if kind in (s.STRING, s.MEMO)
    )
    return (
        f'<c:value i:type="d:EntityMetadata" xmlns:d="{MD}">'
        f'<d:MetadataId>{uuid.uuid5(_NS, entity.name)}</d:MetadataId><d:HasChanged i:nil="true"/>'
        f"<d:ActivityTypeMask>0</d:ActivityTypeMask><d:Attributes>{attrs}</d:Attributes>"
        f"<d:LogicalName>{esc(entity.name)}</d:LogicalName>"
        f"<d:ObjectTypeCode>{entity.object_type_code}</d:ObjectTypeCode>"
        f"<d:SchemaName>{esc(entity.schema_name)}</d:SchemaName></c:value>"
    )
