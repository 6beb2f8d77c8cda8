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

# The teams the subject belongs to. The local console operator belongs to none, but acts for the
# team its command names (``--team``, sent as ``acting_for``): grants to that team count for it.
teams(subject) := {m.team | some m in subject.memberships} | acting_for(subject)

acting_for(subject) := {subject.acting_for} if {
	subject.kind == "console"
	is_string(subject.acting_for)
} else := set()

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
