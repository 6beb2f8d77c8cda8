# Quarantine review: only compliance officers see quarantined images and release or reject them,
# and every release or rejection carries a reason. Which roles may do what is data.
#
# Input: {"action": "view"|"release"|"reject", "subject": {...}, "reason": str}
package latentops.quarantine

import data.latentops.lib
import rego.v1

cfg := data.policy_data.quarantine

decision := evaluate(input)

evaluate(inp) := lib.decision(violations(inp))

violations(inp) := action_role(inp) | missing_reason(inp)

roles(inp) := lib.effective_roles(inp.subject, cfg.console_roles)

action_role(inp) := {lib.violation("quarantine.unknown_action", concat("", ["unknown quarantine action '", inp.action, "'"]))} if {
	not cfg.actions[inp.action]
} else := {lib.violation(
	"quarantine.role",
	concat("", ["only ", concat(", ", cfg.actions[inp.action].roles), " may ", inp.action, " quarantined images"]),
)} if {
	count(roles(inp) & {r | some r in cfg.actions[inp.action].roles}) == 0
} else := set()

missing_reason(inp) := {lib.violation("quarantine.reason_required", concat("", ["a reason is required to ", inp.action, " an image"]))} if {
	inp.action in {"release", "reject"}
	trim_space(object.get(inp, "reason", "")) == ""
} else := set()
