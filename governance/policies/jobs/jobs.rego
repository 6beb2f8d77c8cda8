# Jobs: who may fine-tune or generate with which base model, limits on steps, resolution, LoRA
# rank and batch per role, per-team quotas, and the licence/consent attestation that training
# uploads need. Model access itself is decided by the models policy ("use").
#
# Input: {"action": "fine_tune"|"generate"|"queue", "team": str,
#         "subject": {...as in models}, "model": {...}, "grants": [...],
#         "params": {"steps", "resolution", "rank", "batch", "processes"},  # absent keys are not checked
#         "uploads": {"count": int, "attestation": {"licence": bool, "consent": bool}},
#         "priority": int | null,                                   # requested; null: the role's default
#         "usage": {"queued_jobs": int, "gpu_hours": number,        # the team's current use: GPU-hours
#                   "period": "rolling_days:N"|"calendar_month"|""}} # counted in the team's quota period
#
# "queue" is any other job a member puts on the queue (diagnostics, datasets): role, priority and
# the queue quota apply, model limits do not. The decision carries the job's effective priority
# (0-9, higher runs first): the role's default unless one was asked for, never above the role's
# maximum. How many of a team's jobs run at once ("max_concurrent_jobs") is not decided here: a
# team at that quota still queues, and workers hold its next job back and say why.
package latentops.jobs

import data.latentops.lib
import data.latentops.models
import rego.v1

cfg := data.policy_data.jobs

decision := evaluate(input)

evaluate(inp) := object.union(lib.decision(violations(inp)), {"priority": priority(inp)})

violations(inp) := ((action_role(inp) | priority_limit(inp)) | quotas(inp)) | model_rules(inp)

# Model access, training limits and attestation concern jobs that use a base model.
model_rules(inp) := set() if {
	inp.action == "queue"
} else := (model_access(inp) | limits(inp)) | attestation(inp)

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

limited_params := ["steps", "resolution", "rank", "batch", "processes"]

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
	"jobs.quota.queued_jobs",
	sprintf("team already has %v jobs waiting; the quota is %v", [inp.usage.queued_jobs, quota(inp.team).max_queued_jobs]),
) |
	inp.usage.queued_jobs >= quota(inp.team).max_queued_jobs
} | {lib.violation(
	"jobs.quota.gpu_hours",
	sprintf("team has used %v GPU-hours%v; the quota is %v", [inp.usage.gpu_hours, period_words(object.get(inp.usage, "period", "")), quota(inp.team).max_gpu_hours]),
) |
	inp.usage.gpu_hours >= quota(inp.team).max_gpu_hours
}

# The quota period as the refusal names it ("" when GPU-hours count since the first job).
period_words(period) := " this calendar month" if {
	period == "calendar_month"
} else := sprintf(" in the last %s days", [substring(period, count("rolling_days:"), -1)]) if {
	startswith(period, "rolling_days:")
} else := ""

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

# Priority: a role's default and the highest it may ask for; roles not listed get "default".
priority_rule(inp) := p if {
	p := cfg.priority.roles[role(inp)]
} else := cfg.priority["default"]

requested_priority(inp) := inp.priority if {
	is_number(inp.priority)
} else := priority_rule(inp)["default"]

# Comparisons, not min(): embedded rego-cpp's min over numbers of different widths is unreliable.
priority(inp) := requested_priority(inp) if {
	requested_priority(inp) <= priority_rule(inp).max
} else := priority_rule(inp).max

priority_limit(inp) := {lib.violation(
	"jobs.priority",
	sprintf("priority %v is above %v, the highest your role may ask for", [inp.priority, priority_rule(inp).max]),
) |
	is_number(inp.priority)
	inp.priority > priority_rule(inp).max
} | {lib.violation("jobs.priority", "priority must be a whole number from 0 to 9") |
	is_number(inp.priority)
	not priority_in_range(inp.priority)
}

priority_in_range(p) if {
	p == round(p)
	p >= 0
	p <= 9
}
