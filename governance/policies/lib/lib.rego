# Helpers shared by every domain policy: the shape of a violation and of a decision, and the
# subject's roles. Policies are pure functions of their input (``evaluate(inp)``) so tests can
# call them directly; ``decision := evaluate(input)`` is the entry point the engines query.
package latentops.lib

import rego.v1

violation(rule_id, reason) := {"rule_id": rule_id, "reason": reason}

# Allow only when nothing denies; the engines additionally require "allow" to be exactly true.
decision(violations) := {"allow": count(violations) == 0, "deny": violations}

# Every role the subject holds, in any team.
roles(subject) := {m.role | some m in subject.memberships}

# The teams the subject belongs to.
teams(subject) := {m.team | some m in subject.memberships}

# The subject's role in one team ("" when not a member).
role_in(subject, team) := r if {
	some m in subject.memberships
	m.team == team
	r := m.role
} else := ""

# The local console operator is treated as holding the roles policy data gives it.
effective_roles(subject, console_roles) := roles(subject) | console_grants(subject, console_roles)

console_grants(subject, console_roles) := {r |
	subject.kind == "console"
	some r in console_roles
}
