# Jobs: who may fine-tune or generate with which base model, limits on steps, resolution, LoRA
# rank and batch per role, per-team quotas, and the licence/consent attestation that training
# uploads need. Model access itself is decided by the models policy ("use").
#
# Input: {"action": "fine_tune"|"generate", "team": str,
#         "subject": {...as in models}, "model": {...}, "grants": [...],
#         "params": {"steps", "resolution", "rank", "batch"},       # absent keys are not checked
#         "uploads": {"count": int, "attestation": {"licence": bool, "consent": bool}},
#         "usage": {"concurrent_jobs": int, "gpu_hours": number}}  # the team's current use
package latentops.jobs

import data.latentops.lib
import data.latentops.models
import rego.v1

cfg := data.policy_data.jobs

decision := evaluate(input)

evaluate(inp) := lib.decision(violations(inp))

violations(inp) := (((action_role(inp) | model_access(inp)) | limits(inp)) | quotas(inp)) | attestation(inp)

# The subject's role in the team the job runs for; the console operator gets its configured role.
role(inp) := r if {
	inp.subject.kind == "console"
	r := cfg.console_roles[0]
} else := lib.role_in(inp.subject, inp.team)

action_role(inp) := {lib.violation("jobs.unknown_action", concat("", ["unknown job action '", inp.action, "'"]))} if {
	not cfg.actions[inp.action]
} else := {lib.violation(
	"jobs.role",
	concat("", ["your role in team '", inp.team, "' may not ", inp.action]),
)} if {
	not role(inp) in cfg.actions[inp.action].roles
} else := set()

model_access(inp) := {lib.violation(v.rule_id, v.reason) |
	some v in models.evaluate({"action": "use", "subject": inp.subject, "model": inp.model, "grants": inp.grants}).deny
}

limited_params := ["steps", "resolution", "rank", "batch"]

# The limit on "steps" is "max_steps" in the role's limits, and so on.
exceeded(inp) := [{"param": param, "value": got, "limit": most} |
	some param in limited_params
	got := inp.params[param]
	most := role_limit(inp, param)
	got > most
]

role_limit(inp, param) := cfg.limits[role(inp)][concat("", ["max_", param])]

limits(inp) := {lib.violation(
	concat("", ["jobs.limit.", e.param]),
	sprintf("%s %v exceeds the limit of %v for your role", [e.param, e.value, e.limit]),
) |
	some e in exceeded(inp)
}

quota(team) := q if {
	q := object.union(cfg.quotas["default"], cfg.quotas.teams[team])
} else := cfg.quotas["default"]

quotas(inp) := {lib.violation(
	"jobs.quota.concurrent_jobs",
	sprintf("team already runs %v jobs; the quota is %v", [inp.usage.concurrent_jobs, quota(inp.team).max_concurrent_jobs]),
) |
	inp.usage.concurrent_jobs >= quota(inp.team).max_concurrent_jobs
} | {lib.violation(
	"jobs.quota.gpu_hours",
	sprintf("team has used %v GPU-hours; the quota is %v", [inp.usage.gpu_hours, quota(inp.team).max_gpu_hours]),
) |
	inp.usage.gpu_hours >= quota(inp.team).max_gpu_hours
}

attestation(inp) := {lib.violation(
	"jobs.attestation_missing",
	"training uploads need a licence and consent attestation",
) |
	inp.action in cfg.attestation_required_for
	inp.uploads.count > 0
	not attested(inp)
}

attested(inp) if {
	inp.uploads.attestation.licence == true
	inp.uploads.attestation.consent == true
}
