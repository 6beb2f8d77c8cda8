# Route-level access: which roles may call which API action, what a personal API token's scopes
# allow, and team isolation. Every REST route and portal page asks this policy before it calls a
# service; the service then asks its own domain policy (jobs, models, quarantine, ...) about the
# specific request. Roles, scopes and the roles that see every team are data.
#
# Input: {"action": "jobs.read"|...,                     # a key of data.policy_data.access.actions
#         "subject": {"kind": "user"|"console", "user_id", "active", "memberships": [{"team", "role"}]},
#         "token": {"scopes": ["read", ...]} | null,      # null for a browser session
#         "resource": {"team": str|null, "granted": bool} # optional: the team owning the resource
#        }
package latentops.access

import data.latentops.lib
import rego.v1

cfg := data.policy_data.access

decision := evaluate(input)

evaluate(inp) := lib.decision(violations(inp))

violations(inp) := ((action_role(inp) | inactive(inp)) | token_scope(inp)) | team(inp)

roles(inp) := lib.effective_roles(inp.subject, cfg.console_roles)

action_role(inp) := {lib.violation("access.unknown_action", concat("", ["unknown API action '", inp.action, "'"]))} if {
	not cfg.actions[inp.action]
} else := {lib.violation(
	"access.role",
	concat("", ["none of your roles may ", inp.action, "; it needs one of ", concat(", ", cfg.actions[inp.action].roles)]),
)} if {
	count(roles(inp) & {r | some r in cfg.actions[inp.action].roles}) == 0
} else := set()

inactive(inp) := {lib.violation("access.inactive", "this account is disabled")} if {
	inp.subject.active == false
} else := set()

# A token without "*" must hold one of the scopes the action lists; browser sessions have no token.
token_scope(inp) := set() if {
	not is_object(object.get(inp, "token", null))
} else := set() if {
	"*" in inp.token.scopes
} else := set() if {
	some s in inp.token.scopes
	s in object.get(cfg.actions, [inp.action, "scopes"], [])
} else := {lib.violation(
	"access.scope",
	concat("", ["this API token's scopes do not allow ", inp.action]),
)}

# Team isolation: a resource of another team is invisible unless a grant covers it or one of the
# subject's roles sees every team. Callers turn this violation into "not found".
team(inp) := set() if {
	not is_object(object.get(inp, "resource", null))
} else := set() if {
	count(roles(inp) & {r | some r in cfg.all_teams_roles}) > 0
} else := set() if {
	object.get(inp.resource, "granted", false) == true
} else := set() if {
	inp.resource.team != null
	inp.resource.team in lib.teams(inp.subject)
} else := {lib.violation("access.team", "the resource belongs to another team")}
