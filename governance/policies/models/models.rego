# Access to model weights: use, download and manage, by grant to a team or a user (RBAC), limited
# by the model's sensitivity label (ABAC). Admins, and holders of a manage grant, grant and revoke.
#
# Input: {"action": "use"|"download"|"manage"|"grant"|"revoke",
#         "subject": {"kind": "user"|"console", "user_id", "memberships": [{"team", "role"}]},
#         "model": {"name", "sensitivity", "owner_team"},
#         "grants": [{"action", "team", "user_id"}]}   # the model's active grants
package latentops.models

import data.latentops.lib
import rego.v1

cfg := data.policy_data.models

decision := evaluate(input)

evaluate(inp) := lib.decision(violations(inp))

violations(inp) := unknown_action(inp) | (access(inp) | administration(inp))

unknown_action(inp) := {lib.violation("models.unknown_action", concat("", ["unknown action '", inp.action, "'"]))} if {
	not inp.action in cfg.actions
	not inp.action in cfg.grant_actions
} else := set()

roles(inp) := lib.effective_roles(inp.subject, cfg.console_roles)

# Some active grant covers the action for the subject or one of the subject's teams.
has_grant(inp, action) if {
	some g in inp.grants
	g.action in cfg.implied_by[action]
	grantee(inp.subject, g)
}

grantee(subject, g) if {
	g.user_id != null
	g.user_id == subject.user_id
}

grantee(subject, g) if {
	g.team != null
	g.team in lib.teams(subject)
}

level(inp) := cfg.sensitivity[inp.model.sensitivity]

access(inp) := set() if {
	not inp.action in cfg.actions
} else := {lib.violation(
	"models.unknown_sensitivity",
	concat("", ["model '", inp.model.name, "' has an unknown sensitivity label; access is refused until it is labelled"]),
)} if {
	not cfg.sensitivity[inp.model.sensitivity]
} else := label_violations(inp) | grant_violations(inp)

label_violations(inp) := {lib.violation(
	"models.sensitivity_role",
	concat("", ["model '", inp.model.name, "' is labelled ", inp.model.sensitivity, "; none of your roles may access it"]),
) |
	count(roles(inp) & {r | some r in level(inp).allowed_roles}) == 0
}

grant_violations(inp) := set() if {
	inp.action in level(inp).open_actions
} else := set() if {
	has_grant(inp, inp.action)
} else := {lib.violation(
	"models.no_grant",
	concat("", ["no grant lets you ", inp.action, " model '", inp.model.name, "'; ask an admin for a grant"]),
)}

administration(inp) := set() if {
	not inp.action in cfg.grant_actions
} else := set() if {
	count(roles(inp) & {r | some r in cfg.grant_admin_roles}) > 0
} else := set() if {
	has_grant(inp, "manage")
} else := {lib.violation(
	"models.grant_not_admin",
	concat("", ["only admins or holders of a manage grant may ", inp.action, " access to model '", inp.model.name, "'"]),
)}
