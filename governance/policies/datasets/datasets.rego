# Synthetic datasets: who may generate and export them, and how large they may be.
#
# Input: {"action": "generate"|"export", "team": str, "subject": {...},
#         "dataset": {"images": int, "resolution": int, "team": str}}
package latentops.datasets

import data.latentops.lib
import rego.v1

cfg := data.policy_data.datasets

decision := evaluate(input)

evaluate(inp) := lib.decision(violations(inp))

violations(inp) := (action_role(inp) | size(inp)) | ownership(inp)

role(inp) := r if {
	inp.subject.kind == "console"
	r := cfg.console_roles[0]
} else := lib.role_in(inp.subject, inp.team)

action_role(inp) := {lib.violation("datasets.unknown_action", concat("", ["unknown dataset action '", inp.action, "'"]))} if {
	not cfg.actions[inp.action]
} else := {lib.violation(
	"datasets.role",
	concat("", ["your role in team '", inp.team, "' may not ", inp.action, " datasets"]),
)} if {
	not role(inp) in cfg.actions[inp.action].roles
} else := set()

max_images(inp) := n if {
	n := cfg.max_images[role(inp)]
} else := 0

size(inp) := {lib.violation(
	"datasets.size",
	sprintf("%v images exceed the limit of %v for your role", [inp.dataset.images, max_images(inp)]),
) |
	inp.action == "generate"
	inp.dataset.images > max_images(inp)
} | {lib.violation(
	"datasets.resolution",
	sprintf("resolution %v exceeds the limit of %v", [inp.dataset.resolution, cfg.max_resolution]),
) |
	inp.action == "generate"
	inp.dataset.resolution > cfg.max_resolution
}

# A dataset is exported only by members of the team that owns it.
ownership(inp) := {lib.violation(
	"datasets.not_owner",
	concat("", ["dataset belongs to team '", inp.dataset.team, "'"]),
) |
	inp.action == "export"
	inp.subject.kind != "console"
	not inp.dataset.team in lib.teams(inp.subject)
}
