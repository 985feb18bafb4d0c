"""Render an isolation audit (api.policy_audit) for people, or as JSON for machines."""

import dataclasses
import json
from collections import defaultdict
from typing import Any

from api.ops.policy_audit import Audit, Grant, Policy, Role, Table


def _flag(value: bool, name: str) -> str:
    return name if value else f"NO{name}"


def _role_line(role: Role) -> str:
    used_as = "login role" if role.is_login_role else "per-request role"
    attributes = ", ".join(
        [
            _flag(role.can_login, "LOGIN"),
            _flag(role.superuser, "SUPERUSER"),
            _flag(role.bypassrls, "BYPASSRLS"),
            _flag(role.inherits, "INHERIT"),
            _flag(role.createrole, "CREATEROLE"),
            _flag(role.createdb, "CREATEDB"),
        ]
    )
    line = f"  {role.name} ({used_as}): {attributes}; member of: {', '.join(role.member_of) or '(none)'}"
    if role.is_login_role:
        line += "; can switch to todo_app" if role.can_switch_to_todo_app else "; CANNOT switch to todo_app"
    return line


def _table_lines(table: Table, policies: list[Policy]) -> list[str]:
    if table.rls_enabled:
        rls = "RLS enabled, forced" if table.rls_forced else "RLS enabled, NOT forced"
    else:
        rls = "RLS disabled"
    reach = "open to todo_app" if table.open_to_todo_app else "not open to todo_app"
    lines = [f"  {table.name} (owner {table.owner}): {rls}; {reach}; {table.policies} policies"]
    for policy in policies:
        lines.append(f'    "{policy.name}": {policy.kind} {policy.command} TO {", ".join(policy.roles)}')
        if policy.using_expression is not None:
            lines.append(f"      USING      {policy.using_expression}")
        if policy.with_check_expression is not None:
            lines.append(f"      WITH CHECK {policy.with_check_expression}")
    return lines


def _grant_lines(grants: list[Grant]) -> list[str]:
    by_object: dict[tuple[str, str], list[str]] = defaultdict(list)
    for grant in grants:
        shown = f"{grant.privilege} ({grant.columns})" if grant.columns else grant.privilege
        by_object[(grant.object_type, grant.object)].append(shown)
    return [f"  {kind} {name}: {', '.join(privileges)}" for (kind, name), privileges in by_object.items()]


def render_text(audit: Audit) -> str:
    policies_by_table: dict[str, list[Policy]] = defaultdict(list)
    for policy in audit.policies:
        policies_by_table[policy.table_name].append(policy)
    lines = [
        f'Isolation audit of database "{audit.database}" as {audit.login_role} '
        f"(PostgreSQL {audit.server_version})",
        f"Login role: {audit.login_role}, {audit.login_role_kind}",
        *([f"WARNING: {audit.login_role_warning}"] if audit.login_role_warning else []),
        "",
        "Roles",
        *(_role_line(role) for role in audit.roles),
        "",
        "Roles that can become todo_app (and so act as any user)",
        *(f"  {member.name}: {', '.join(member.how)}" for member in audit.can_become_todo_app),
        *([] if audit.can_become_todo_app else ["  (none)"]),
        "",
        "Tables and their policies",
    ]
    for table in audit.tables:
        lines += _table_lines(table, policies_by_table.get(table.name, []))
    lines += ["", "Grants to todo_app", *(_grant_lines(audit.grants) or ["  (none)"]), ""]
    if audit.findings:
        lines.append(f"Findings ({len(audit.findings)}): isolation is weakened, do not deploy")
        lines += [f"  - [{finding.kind}] {finding.message}" for finding in audit.findings]
    else:
        lines.append(
            "Findings: none. Row-level security isolates users and the live policies equal sql/policies/."
        )
    return "\n".join(lines)


def as_json(audit: Audit) -> dict[str, Any]:
    document = dataclasses.asdict(audit)
    for policy in document["policies"]:
        del policy["oid"]
    for finding in document["findings"]:
        del finding["cause"]  # what `todo-api serve` advises on; the message says it in words
    return {"ok": not audit.findings, **document}


def render_json(audit: Audit) -> str:
    return json.dumps(as_json(audit), indent=2)
