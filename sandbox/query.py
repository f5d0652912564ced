"""Query model shared by FetchXML, QueryExpression, OData and Web API, and its SQLite translation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import quoteattr

from lxml import etree

from . import schema as s
from .store import Store
from .values import E_INVALID_ARGUMENT, E_NO_ATTRIBUTE, CrmFault, norm_guid, parse_datetime

MAX_PAGE = 5000

SAFE_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False, huge_tree=False
)


@dataclass
class Condition:
    """attribute operator values."""

    attribute: str
    operator: str
    values: list[Any] = field(default_factory=list)


@dataclass
class Filter:
    """and/or group of conditions and nested filters."""

    type: str = "and"
    conditions: list[Condition] = field(default_factory=list)
    filters: list[Filter] = field(default_factory=list)


@dataclass
class Link:
    """An inner join used as an existence filter (link-entity)."""

    name: str
    from_attr: str
    to_attr: str
    link_type: str = "inner"
    filters: list[Filter] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)


@dataclass
class Query:
    """One retrieve-multiple request in engine form."""

    entity: str
    columns: list[str] | None = None
    filters: list[Filter] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    orders: list[tuple[str, bool]] = field(default_factory=list)
    count: int | None = None
    page: int = 1
    cookie: str | None = None
    top: int | None = None
    return_total: bool = False
    after_id: str | None = None


@dataclass
class Result:
    """Rows of one page plus paging facts."""

    entity: str
    rows: list[tuple[str, str, dict[str, Any]]]
    more: bool
    cookie: str | None
    total: int = -1
    limit_exceeded: bool = False
    columns: list[str] | None = None


def parse_xml(text: str | bytes) -> etree._Element:
    """Parse untrusted XML safely; refuse DOCTYPE declarations."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    try:
        root = etree.fromstring(data, SAFE_PARSER)
    except etree.XMLSyntaxError as exc:
        raise CrmFault(E_INVALID_ARGUMENT, f"The XML is not well formed: {exc}") from exc
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise CrmFault(E_INVALID_ARGUMENT, "DTD is prohibited in this XML document.")
    return root


def _bool(text: str | None) -> bool:
    return (text or "").strip().lower() in ("true", "1")


def _parse_filter(el: etree._Element) -> Filter:
    flt = Filter(type=(el.get("type") or "and").lower())
    for child in el:
        if not isinstance(child.tag, str):
            continue
        if child.tag == "condition":
            values = [v.text or "" for v in child if v.tag == "value"]
            if child.get("value") is not None:
                values.insert(0, child.get("value"))
            flt.conditions.append(
                Condition(child.get("attribute") or "", (child.get("operator") or "eq").lower(), values)
            )
        elif child.tag == "filter":
            flt.filters.append(_parse_filter(child))
    return flt


def _parse_link(el: etree._Element) -> Link:
    link = Link(
        name=el.get("name") or "",
        from_attr=el.get("from") or "",
        to_attr=el.get("to") or "",
        link_type=(el.get("link-type") or "inner").lower(),
    )
    for child in el:
        if child.tag == "filter":
            link.filters.append(_parse_filter(child))
        elif child.tag == "link-entity":
            link.links.append(_parse_link(child))
    return link


def parse_fetch(text: str) -> Query:
    """Turn FetchXML text into a Query."""
    root = parse_xml(text)
    if root.tag != "fetch":
        raise CrmFault(E_INVALID_ARGUMENT, "Invalid FetchXML: the root element must be <fetch>.")
    if _bool(root.get("aggregate")):
        raise CrmFault(E_INVALID_ARGUMENT, "Aggregate queries are not supported by the sandbox.")
    ent = root.find("entity")
    if ent is None or not ent.get("name"):
        raise CrmFault(E_INVALID_ARGUMENT, "Invalid FetchXML: <entity name> is required.")
    query = Query(entity=ent.get("name") or "")
    try:
        if root.get("count"):
            query.count = int(root.get("count") or 0)
        query.page = int(root.get("page") or 1)
        if root.get("top"):
            query.top = int(root.get("top") or 0)
    except ValueError as exc:
        raise CrmFault(E_INVALID_ARGUMENT, "Invalid FetchXML: count/page/top must be integers.") from exc
    query.cookie = root.get("paging-cookie")
    query.return_total = _bool(root.get("returntotalrecordcount"))
    columns: list[str] = []
    all_attributes = False
    for child in ent:
        if not isinstance(child.tag, str):
            continue
        if child.tag == "attribute":
            columns.append(child.get("name") or "")
        elif child.tag == "all-attributes":
            all_attributes = True
        elif child.tag == "order":
            query.orders.append((child.get("attribute") or "", _bool(child.get("descending"))))
        elif child.tag == "filter":
            query.filters.append(_parse_filter(child))
        elif child.tag == "link-entity":
            query.links.append(_parse_link(child))
    query.columns = None if all_attributes else columns
    return query


def make_cookie(entity: s.EntityDef, page: int, first: str, last: str) -> str:
    """Paging cookie in the CRM's shape: <cookie page="N"><leadid last="{ID}" first="{ID}" /></cookie>."""
    return (
        f'<cookie page="{page}"><{entity.primary_id} last="{{{last.upper()}}}" first="{{{first.upper()}}}" /></cookie>'
    )


def cookie_last_id(cookie: str, primary_id: str) -> tuple[int, str] | None:
    """(page, last id) from a FetchXML paging cookie, or None when unusable."""
    try:
        root = parse_xml(cookie)
    except CrmFault:
        return None
    node = root.find(primary_id)
    if root.tag != "cookie" or node is None or not node.get("last"):
        return None
    try:
        return int(root.get("page") or 0), norm_guid(node.get("last") or "")
    except (ValueError, CrmFault):
        return None


class _SqlBuilder:
    """Builds the WHERE clause for one entity alias."""

    def __init__(self, engine: QueryEngine) -> None:
        self.engine = engine
        self.params: list[Any] = []
        self.alias_n = 0

    def entity_def(self, name: str) -> s.EntityDef:
        ent = s.ENTITIES.get(name)
        if ent is None:
            raise CrmFault(E_INVALID_ARGUMENT, f"The entity with a name = '{name}' was not found in the MetadataCache.")
        return ent

    def column(self, ent: s.EntityDef, alias: str, attr: str) -> tuple[str, str]:
        """SQL expression and attribute type for an attribute."""
        kind = ent.attributes.get(attr)
        if kind is None:
            raise CrmFault(E_NO_ATTRIBUTE, f"'{ent.name}' entity doesn't contain attribute with Name = '{attr}'.")
        if attr == ent.primary_id:
            return f"{alias}.id", s.GUID
        if attr == "emailaddress1":
            return f"{alias}.email", s.STRING
        if kind == s.LOOKUP:
            return f"json_extract({alias}.data, '$.\"{attr}\".Id')", s.LOOKUP
        return f"json_extract({alias}.data, '$.\"{attr}\"')", kind

    def value(self, kind: str, raw: Any) -> Any:
        """Coerce a condition value to the stored representation."""
        if raw is None:
            return None
        text = raw if isinstance(raw, str) else str(raw)
        try:
            if kind in (s.INT, s.OPTIONSET):
                return int(raw) if isinstance(raw, int) else int(text.strip())
            if kind in (s.DECIMAL, s.DOUBLE, s.MONEY):
                return float(text)
            if kind == s.BOOL:
                if isinstance(raw, bool):
                    return 1 if raw else 0
                return 1 if text.strip().lower() in ("1", "true") else 0
        except ValueError as exc:
            raise CrmFault(E_INVALID_ARGUMENT, f"Condition value '{text}' is not valid for {kind}.") from exc
        if kind == s.DATETIME:
            return parse_datetime(text)
        if kind in (s.GUID, s.LOOKUP):
            return norm_guid(text)
        return text.lower()

    def condition(self, ent: s.EntityDef, alias: str, cond: Condition) -> str:
        col, kind = self.column(ent, alias, cond.attribute)
        op = cond.operator
        textual = kind in (s.STRING, s.MEMO)
        # SQL Server's default collation compares text case-insensitively; emulate it.
        expr = f"lower({col})" if textual and not col.endswith(".email") else col
        if op == "null":
            return f"{col} IS NULL"
        if op == "not-null":
            return f"{col} IS NOT NULL"
        if op in ("in", "not-in"):
            vals = [self.value(kind, v) for v in cond.values]
            if not vals:
                return "0" if op == "in" else "1"
            self.params.extend(vals)
            marks = ",".join("?" * len(vals))
            return f"{expr} {'IN' if op == 'in' else 'NOT IN'} ({marks})"
        if not cond.values:
            raise CrmFault(E_INVALID_ARGUMENT, f"Condition operator '{op}' needs a value.")
        raw = cond.values[0]
        if op in ("like", "not-like", "begins-with", "ends-with", "not-begin-with", "not-end-with"):
            # The server turns these into SQL Server LIKE without escaping the value: %, _ and [ keep their
            # meaning in begins-with and ends-with too (the sandbox's choice; see README).
            pattern = str(raw)
            if op in ("begins-with", "not-begin-with"):
                pattern += "%"
            elif op in ("ends-with", "not-end-with"):
                pattern = "%" + pattern
            self.params.append(pattern)
            negate = "NOT " if op.startswith("not") else ""
            return f"{negate}(crm_like({col}, ?) = 1)"
        if op in ("on-or-after", "on-or-before", "on"):
            day = self.value(s.DATETIME, raw)[:10]
            self.params.append(day)
            sym = {"on-or-after": ">=", "on-or-before": "<=", "on": "="}[op]
            return f"substr({col}, 1, 10) {sym} ?"
        sym = {"eq": "=", "ne": "<>", "neq": "<>", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}.get(op)
        if sym is None:
            raise CrmFault(E_INVALID_ARGUMENT, f"The condition operator '{op}' is not supported.")
        self.params.append(self.value(kind, raw))
        return f"{expr} {sym} ?"

    def filter(self, ent: s.EntityDef, alias: str, flt: Filter) -> str:
        parts = [self.condition(ent, alias, c) for c in flt.conditions]
        parts += [self.filter(ent, alias, f) for f in flt.filters]
        if not parts:
            return "1"
        joiner = " OR " if flt.type == "or" else " AND "
        return "(" + joiner.join(parts) + ")"

    def link(self, parent: s.EntityDef, parent_alias: str, link: Link) -> str:
        child = self.entity_def(link.name)
        self.alias_n += 1
        alias = f"l{self.alias_n}"
        to_col, _ = self.column(parent, parent_alias, link.to_attr or parent.primary_id)
        from_col, _ = self.column(child, alias, link.from_attr or child.primary_id)
        where = [f"{from_col} = {to_col}"]
        # The entity-name parameters come first in the SQL text, so insert them before the filter's.
        position = len(self.params)
        where += [self.filter(child, alias, f) for f in link.filters]
        where += [self.link(child, alias, sub) for sub in link.links if sub.link_type == "inner"]
        entities = self.engine.storage_entities(child.name)
        self.params[position:position] = entities
        marks = ",".join("?" * len(entities))
        # Only generated aliases and "?" marks go into the text; values are bound parameters.
        head = f"EXISTS (SELECT 1 FROM records {alias} WHERE {alias}.entity IN ({marks}) AND "  # noqa: S608
        return head + " AND ".join(where) + ")"


class QueryEngine:
    """Runs Query objects against the Store."""

    def __init__(self, store: Store) -> None:
        """Bind to a store."""
        self.store = store

    @staticmethod
    def storage_entities(name: str) -> list[str]:
        """Stored entity names behind a logical name (activitypointer is a union)."""
        return list(s.ACTIVITY_ENTITIES) if name == "activitypointer" else [name]

    def run(self, query: Query, default_count: int = MAX_PAGE) -> Result:
        """Run a query and return one page."""
        b = _SqlBuilder(self)
        ent = b.entity_def(query.entity)
        for col in query.columns or []:
            b.column(ent, "r", col)
        entities = self.storage_entities(ent.name)
        b.params.extend(entities)
        where = [f"r.entity IN ({','.join('?' * len(entities))})"]
        where += [b.filter(ent, "r", f) for f in query.filters]
        where += [b.link(ent, "r", link) for link in query.links if link.link_type == "inner"]
        filter_params = list(b.params)
        orders = [(a, d) for a, d in query.orders if a]
        order_sql = []
        for attr, desc in orders:
            col, kind = b.column(ent, "r", attr)
            if kind in (s.STRING, s.MEMO) and not col.endswith(".email"):
                col = f"lower({col})"
            order_sql.append(f"{col} {'DESC' if desc else 'ASC'}")
        id_desc = bool(orders) and orders[-1][0] == ent.primary_id and orders[-1][1]
        if not orders or orders[-1][0] != ent.primary_id:
            order_sql.append("r.id ASC")
        simple_order = not orders or (len(orders) == 1 and orders[0][0] == ent.primary_id and not id_desc)

        count = query.count if query.count and query.count > 0 else default_count
        count = min(count, MAX_PAGE)
        page = max(query.page, 1)
        offset = (page - 1) * count
        key_where = list(where)
        params = list(filter_params)
        if query.top:
            count, offset, page = min(query.top, MAX_PAGE), 0, 1
        elif query.after_id is not None and simple_order:
            key_where.append("r.id > ?")
            params.append(query.after_id)
            offset = 0
        elif query.cookie and simple_order:
            parsed = cookie_last_id(query.cookie, ent.primary_id)
            # Like the CRM, a cookie only helps for the page right after the one it came from.
            if parsed and parsed[0] == page - 1:
                key_where.append("r.id > ?")
                params.append(parsed[1])
                offset = 0
        sql = (
            "SELECT r.entity, r.id, r.data FROM records r WHERE "  # noqa: S608
            + " AND ".join(key_where)
            + " ORDER BY "
            + ", ".join(order_sql)
            + " LIMIT ? OFFSET ?"
        )
        rows = self.store.select(sql, [*params, count + 1, offset])
        more = len(rows) > count and not query.top
        rows = rows[:count]
        cookie = make_cookie(ent, page, rows[0][1], rows[-1][1]) if rows else None
        total, exceeded = -1, False
        if query.return_total:
            total = self.store.scalar(
                "SELECT COUNT(*) FROM (SELECT 1 FROM records r WHERE "  # noqa: S608
                + " AND ".join(where)
                + f" LIMIT {MAX_PAGE + 1})",
                filter_params,
            )
            exceeded = total > MAX_PAGE
            total = min(total, MAX_PAGE)
        return Result(ent.name, rows, more, cookie, total, exceeded, query.columns)


def escape_attr(value: str) -> str:
    """XML attribute quoting for values put into FetchXML."""
    return quoteattr(value, {'"': "&quot;"})
